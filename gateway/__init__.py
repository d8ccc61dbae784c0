"""The Kamiwaza gateway service: authentication, OPA decisions, forwarding."""

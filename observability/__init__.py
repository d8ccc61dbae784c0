"""Metrics, audit records and audit sinks of the Kamiwaza gateway."""

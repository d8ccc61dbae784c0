"""GCP Vertex AI: Gemini (`gemini`) and Claude (the Anthropic adapter reused).

`auth` holds the service-account token cache, `gemini` the pure Gemini
translation, `adapter` the HTTP-facing adapters.
"""

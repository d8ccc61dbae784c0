"""Azure OpenAI: the OpenAI-compatible adapter with deployment URLs, `api-key` or
Microsoft Entra ID auth, and Azure's error bodies (`adapter`)."""

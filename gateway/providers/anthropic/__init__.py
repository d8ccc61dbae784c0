"""Anthropic's Messages API (and, through the Vertex adapter, Claude on Vertex AI).

`translate` is the pure wire translation, `adapter` the HTTP-facing adapter.
"""

"""OpenAI-compatible upstreams: OpenAI, vLLM, TGI, TensorRT-LLM (and Azure's base).

`translate` is the pure wire translation, `adapter` the HTTP-facing adapter.
"""

"""A demo model server for the quick start: NOT a model.

`kamiwaza demo-upstream --port N --name NAME` serves the OpenAI API shape that
vLLM, TGI and TensorRT-LLM serve (chat completions, JSON and SSE streaming with
usage; embeddings; `/v1/models`) with deterministic canned answers that say
which demo endpoint answered, so that `make run` routes real requests through
the gateway's real forwarding path with no model and no credential. See
:mod:`gateway.demo.server`.
"""

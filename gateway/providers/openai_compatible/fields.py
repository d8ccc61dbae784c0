"""Which request fields an OpenAI-compatible upstream is sent.

The client's body is not forwarded verbatim: only the fields of the API are.
A field outside it (`api_base`, `base_url`, `extra_headers`, or anything a
client library or a confused caller adds) is dropped, as the native adapters
(Anthropic, Bedrock, Vertex AI), which build their bodies field by field, drop
it too. This matters when the upstream is itself a proxy that honours such
fields: a client must not be able to redirect the gateway's credential.

- `openai` (api.openai.com, and the default flavor) and Azure OpenAI: the
  parameters of OpenAI's Chat Completions API (the `openai` package's
  `CompletionCreateParams`, checked by tests/test_hardening_units.py).
- The self-hosted flavors (`vllm`, `tgi`, `tensorrt-llm`): those, plus the
  sampling and decoding extras their servers document (`top_k`, `min_p`,
  `repetition_penalty`, guided decoding, ...). Fields that make the server load
  code or change its templates (`chat_template`, `logits_processors`,
  `mm_processor_kwargs`, `kv_transfer_params`, `vllm_xargs`) are not among them.
- Embeddings: `input`, `model`, `dimensions`, `encoding_format`, `user`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

CHAT_FIELDS: Final = frozenset(
    {
        "messages",
        "model",
        "stream",
        "stream_options",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "moderation",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)

# vLLM's, TGI's and TensorRT-LLM's documented extra sampling/decoding parameters.
SELF_HOSTED_EXTRAS: Final = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "length_penalty",
        "best_of",
        "use_beam_search",
        "stop_token_ids",
        "include_stop_str_in_output",
        "ignore_eos",
        "min_tokens",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "truncate_prompt_tokens",
        "prompt_logprobs",
        "allowed_token_ids",
        "bad_words",
        "echo",
        "add_generation_prompt",
        "continue_final_message",
        "add_special_tokens",
        "documents",
        "chat_template_kwargs",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "guided_decoding_backend",
        "guided_whitespace_pattern",
        "structural_tag",
        "structured_outputs",
        "priority",
        "return_tokens_as_token_ids",
        "tool_prompt",  # TGI
    }
)

EMBEDDINGS_FIELDS: Final = frozenset({"input", "model", "dimensions", "encoding_format", "user"})

SELF_HOSTED_FLAVORS: Final = frozenset({"vllm", "tgi", "tensorrt-llm"})


def chat_fields(flavor: str) -> frozenset[str]:
    """The Chat Completions fields an endpoint of `flavor` is sent."""
    return CHAT_FIELDS | SELF_HOSTED_EXTRAS if flavor in SELF_HOSTED_FLAVORS else CHAT_FIELDS


def known_fields(body: Mapping[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    """`body` with only `fields` kept (a new dict; `body` is not changed)."""
    return {key: value for key, value in body.items() if key in fields}

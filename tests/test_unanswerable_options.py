"""Options a translated provider cannot honour (log probabilities, audio
output) are refused the same way by every translating adapter: 400
`unsupported_request`, no failover, nothing sent; they are never dropped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.providers import AttemptFailed, AttemptFailure
from gateway.providers.anthropic import translate as claude
from gateway.providers.bedrock import translate as converse
from gateway.providers.chat import UNSUPPORTED_REQUEST
from gateway.providers.openai_compatible import translate as openai_compatible
from gateway.providers.vertex import gemini

HELLO = [{"role": "user", "content": "hi"}]


def _anthropic(body: dict[str, Any]) -> Any:
    return claude.build_request(body, model="m", max_tokens_default=5, stream=False, sampling=True)


def _gemini(body: dict[str, Any]) -> Any:
    return gemini.build_request(body, max_tokens_default=None)


def _bedrock(body: dict[str, Any]) -> Any:
    return converse.build_converse_request(body)


TRANSLATORS: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
    "anthropic": ("Anthropic", _anthropic),
    "gemini": ("Gemini on Vertex AI", _gemini),
    "bedrock": ("Bedrock", _bedrock),
}

OPTIONS = [
    ({"logprobs": True}, "'logprobs' cannot be honoured: {} does not return log probabilities"),
    (
        {"logprobs": True, "top_logprobs": 3},
        "'logprobs' cannot be honoured: {} does not return log probabilities",
    ),
    (
        {"top_logprobs": 0},
        "'top_logprobs' cannot be honoured: {} does not return log probabilities",
    ),
    (
        {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
        "audio output cannot be honoured: {} answers with text only",
    ),
]


@pytest.mark.parametrize("provider", TRANSLATORS)
@pytest.mark.parametrize(("options", "message"), OPTIONS)
def test_every_translating_adapter_refuses_the_same_way(
    provider: str, options: dict[str, Any], message: str
) -> None:
    name, build = TRANSLATORS[provider]
    with pytest.raises(AttemptFailed) as info:
        build({"messages": HELLO, **options})
    assert info.value.failure == AttemptFailure(
        400, UNSUPPORTED_REQUEST, message.format(name), False
    )


@pytest.mark.parametrize("provider", TRANSLATORS)
def test_the_options_turned_off_are_accepted(provider: str) -> None:
    _, build = TRANSLATORS[provider]
    body = {"messages": HELLO, "logprobs": False, "top_logprobs": None, "modalities": ["text"]}
    assert build(body)  # a request body was built


def test_openai_compatible_servers_get_the_options_as_they_are() -> None:
    """vLLM, TGI and OpenAI itself honour them: passed through unchanged."""
    body = {"messages": HELLO, "logprobs": True, "top_logprobs": 2}
    out = openai_compatible.build_request_body(body, model="m", stream=False)
    assert (out["logprobs"], out["top_logprobs"]) == (True, 2)

"""What differs between the self-hosted OpenAI-compatible servers (the registry's
`flavor`: vllm, tgi, tensorrt-llm, openai): paths, error bodies and statuses,
tool call arguments, and how usage arrives in streams."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.forwarding import Forwarder
from gateway.providers import adapter_for
from gateway.providers.adapter import Call
from gateway.providers.openai_compatible import translate
from tests.fake_upstream import FakeUpstream
from translator.errors import Position
from translator.registry import Endpoint, Timeouts

BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Say hi"}]}


def endpoint(flavor: str, base_url: str, name: str = "gpu") -> Endpoint:
    return Endpoint(
        name=name,
        type="openai-compatible",
        pos=Position("endpoints.yaml", 1, 1),
        base_url=base_url,
        model="served-model",
        options={"flavor": flavor},
        timeouts=Timeouts(connect_ms=1000, first_token_ms=5000, total_ms=10000),
    )


@pytest.mark.parametrize(
    ("flavor", "base_url", "url"),
    [
        ("vllm", "http://gpu:8000/v1", "http://gpu:8000/v1/chat/completions"),
        ("vllm", "http://gpu:8000", "http://gpu:8000/v1/chat/completions"),
        ("tgi", "http://gpu:8080/", "http://gpu:8080/v1/chat/completions"),
        ("tgi", "http://gpu:8080/v1/", "http://gpu:8080/v1/chat/completions"),
        ("tensorrt-llm", "http://gpu:8000", "http://gpu:8000/v1/chat/completions"),
        ("tensorrt-llm", "http://proxy/llama", "http://proxy/llama/v1/chat/completions"),
        # A generic server: the base URL is taken as given.
        ("openai", "http://proxy/api", "http://proxy/api/chat/completions"),
    ],
)
async def test_paths(flavor: str, base_url: str, url: str) -> None:
    adapter = adapter_for(endpoint(flavor, base_url), environ={})
    assert (await adapter.prepare(BODY, stream=False)).url == url


TGI_TOO_LONG = (
    b'{"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. '
    b'Given: 4000 `inputs` tokens and 200 `max_new_tokens`", "error_type": "validation"}'
)
VLLM_TOO_LONG = (
    b'{"object": "error", "message": "This model\'s maximum context length is 8192 tokens. '
    b'However, you requested 9000 tokens.", "type": "BadRequestError", "param": null, '
    b'"code": 400}'
)


@pytest.mark.parametrize(
    ("flavor", "status", "body", "expected"),
    [
        ("tgi", 422, TGI_TOO_LONG, (400, "context_length_exceeded", False)),
        (
            "tgi",
            422,
            b'{"error": "Input validation error: `temperature` must be strictly positive", '
            b'"error_type": "validation"}',
            (400, "upstream_bad_request", False),
        ),
        (
            "tgi",
            424,
            b'{"error": "Request failed during generation: CUDA out of memory", '
            b'"error_type": "generation"}',
            (502, "upstream_generation_failed", True),
        ),
        (
            "tgi",
            429,
            b'{"error": "Model is overloaded", "error_type": "overloaded"}',
            (429, "rate_limit_exceeded", True),
        ),
        ("vllm", 400, VLLM_TOO_LONG, (400, "context_length_exceeded", False)),
        (
            "tensorrt-llm",
            400,
            b'{"object": "error", "message": "The prompt length (9000) exceeds the '
            b'max_seq_len (8192)", "type": "BadRequestError", "code": 400}',
            (400, "context_length_exceeded", False),
        ),
        (
            "vllm",
            400,
            b'{"object": "error", "message": "temperature must be >= 0", "code": 400}',
            (400, "upstream_bad_request", False),
        ),
    ],
)
def test_error_classes(
    flavor: str, status: int, body: bytes, expected: tuple[int, str, bool]
) -> None:
    failure = translate.classify_server_error(flavor, status, {}, body, redact=str)
    assert (failure.status_for_client, failure.code, failure.retryable) == expected
    assert failure.upstream_status == status


def test_tgi_tool_call_arguments_object_becomes_a_json_string() -> None:
    answer = {
        "object": "chat.completion",
        "id": "",
        "created": 1,
        "model": "tgi",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "0",
                            "type": "function",
                            "function": {
                                "description": None,
                                "name": "weather",
                                "arguments": {"city": "Paris"},
                            },
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    completion, usage = translate.parse_completion(json.dumps(answer).encode())
    function = completion["choices"][0]["message"]["tool_calls"][0]["function"]
    assert function == {"description": None, "name": "weather", "arguments": '{"city":"Paris"}'}
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (5, 7)


def sse(*payloads: Any) -> bytes:
    return b"".join(
        b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n"
        for p in payloads
    )


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
STREAMS = {
    # vLLM: a usage chunk with empty choices before [DONE] (stream_options.include_usage).
    "vllm": sse(
        chunk({"role": "assistant", "content": "Hi"}),
        chunk({"content": "!"}, "stop"),
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": USAGE,
        },
        b"[DONE]",
    ),
    # TGI: its usage chunk has an empty id and no choices.
    "tgi": sse(
        chunk({"role": "assistant", "content": "Hi"}),
        chunk({"role": "assistant", "content": "!"}, "stop"),
        {
            "id": "",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "system_fingerprint": "3.0.0-native",
            "choices": [],
            "usage": USAGE,
        },
        b"[DONE]",
    ),
    # TensorRT-LLM: usage rides on the last chunk with its choice.
    "tensorrt-llm": sse(
        chunk({"role": "assistant", "content": "Hi"}, usage=None),
        chunk({"content": "!"}, "stop", usage=USAGE),
        b"[DONE]",
    ),
}


@pytest.mark.parametrize("flavor", sorted(STREAMS))
@pytest.mark.parametrize("client_wants_usage", [True, False])
def test_usage_in_streams(flavor: str, client_wants_usage: bool) -> None:
    body = dict(BODY)
    if client_wants_usage:
        body["stream_options"] = {"include_usage": True}
    translator = translate.OpenAIStreamTranslator.for_body(body, str)
    frames: list[bytes] = []
    for byte in STREAMS[flavor]:  # byte by byte: framing must not matter
        frames += translator.feed(bytes([byte]))
    frames += translator.finish()
    assert translator.usage == translate.Usage(4, 2)
    payloads = [f.removeprefix(b"data: ").strip() for f in frames]
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hi!"
    with_usage = [c for c in chunks if c.get("usage")]
    # A usage-only chunk reaches only clients that asked; usage riding on a
    # content chunk (TensorRT-LLM) stays on it.
    expected = 1 if client_wants_usage or flavor == "tensorrt-llm" else 0
    assert len(with_usage) == expected


def test_stream_without_usage_is_estimated() -> None:
    translator = translate.OpenAIStreamTranslator.for_body(BODY, str)
    frames = translator.feed(sse(chunk({"content": "Hello there"}, "stop")))
    frames += translator.finish()  # an older server: no usage, no [DONE]
    assert frames[-1] == b"data: [DONE]\n\n"
    assert translator.usage.estimated


@pytest.mark.parametrize("flavor", ["tgi", "tensorrt-llm"])
async def test_root_base_url_reaches_v1_through_the_forwarder(
    flavor: str, fake_upstream: Callable[..., Awaitable[FakeUpstream]]
) -> None:
    up = await fake_upstream(token=None)
    root = up.url.removesuffix("/v1")
    async with Forwarder([endpoint(flavor, root)], environ={}) as forwarder:
        result = await forwarder.complete(
            ["gpu"], Call("chat", BODY, request_id="req-1"), lambda a: a.codec("chat")
        )
    assert result.response is not None
    assert result.response["choices"][0]["message"]["content"].startswith("Hello")
    assert [(r.path, r.json["model"]) for r in up.requests] == [
        ("/v1/chat/completions", "served-model")
    ]

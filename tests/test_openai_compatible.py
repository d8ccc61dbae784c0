"""Units of the adapter seam and the OpenAI-compatible translation (no network)."""

from __future__ import annotations

import json
from typing import Any, get_type_hints

import pytest
from multidict import CIMultiDict
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from pydantic import TypeAdapter

from gateway.providers import (
    AttemptFailed,
    ProviderConfigError,
    ProviderNotImplementedError,
    Secret,
    Usage,
    adapter_for,
)
from gateway.providers.credentials import CredentialStore
from gateway.providers.failures import parse_retry_after
from gateway.providers.openai_compatible import translate
from gateway.providers.openai_compatible.adapter import OpenAIAdapter, OpenAICompatibleAdapter
from gateway.providers.sse import SseEvent, SseParser, SseProtocolError
from gateway.providers.usage import estimate_prompt_tokens
from translator.errors import Position
from translator.registry import Endpoint, Pricing

TOKEN = "sk-canary-5f1d2c3b4a"
BODY: dict[str, Any] = {
    "model": "client-model",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."},
    ],
    "temperature": 0.2,
}


def endpoint(**kwargs: Any) -> Endpoint:
    values: dict[str, Any] = {
        "name": "gpu",
        "type": "openai-compatible",
        "pos": Position("endpoints.yaml", 1, 1),
        "base_url": "http://10.0.0.5:8000/v1/",
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "auth": {"bearer_token_env": "GPU_TOKEN"},
        "options": {"flavor": "vllm"},
    }
    values.update(kwargs)
    return Endpoint(**values)


def validate_request(body: dict[str, Any], *, stream: bool) -> None:
    """Validate a request body with the openai package's own request types.

    The TypedDicts ignore unknown keys and validate iterables lazily, so check
    the keys against the declared ones and materialise the messages.
    """
    params = CompletionCreateParamsStreaming if stream else CompletionCreateParamsNonStreaming
    known = set(get_type_hints(params))
    assert set(body) <= known, set(body) - known
    validated = TypeAdapter(params).validate_python(body)
    messages = list(validated["messages"])
    for message in messages:
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            list(content)


# ---------------------------------------------------------------------------
# Request body


def test_build_request_body_replaces_model_and_drops_stream_options() -> None:
    client = {**BODY, "stream_options": {"include_usage": True}}
    body = translate.build_request_body(client, model="served-model", stream=False)
    assert body == {**BODY, "model": "served-model", "stream": False}
    assert client["model"] == "client-model"  # the client's body is not mutated
    validate_request(body, stream=False)


def test_build_request_body_stream_asks_for_usage() -> None:
    body = translate.build_request_body(
        {**BODY, "stream_options": {"include_obfuscation": False}}, model=None, stream=True
    )
    # No endpoint model: the client's stays.
    assert body == {
        **BODY,
        "stream": True,
        "stream_options": {"include_obfuscation": False, "include_usage": True},
    }
    validate_request(body, stream=True)


async def test_adapter_prepare_builds_url_headers_and_body() -> None:
    adapter = adapter_for(endpoint(), environ={"GPU_TOKEN": TOKEN})
    assert isinstance(adapter, OpenAICompatibleAdapter)
    request = await adapter.prepare(BODY, stream=True)
    assert request.method == "POST"
    assert request.url == "http://10.0.0.5:8000/v1/chat/completions"
    assert request.headers == {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {TOKEN}",
    }
    sent = json.loads(request.body)
    assert sent == {
        **BODY,
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    validate_request(sent, stream=True)
    # The credential never shows in a repr.
    assert TOKEN not in repr(request)
    assert TOKEN not in repr(adapter.__dict__)


async def test_adapter_without_auth_sends_no_authorization() -> None:
    adapter = adapter_for(endpoint(auth={}), environ={})
    request = await adapter.prepare(BODY, stream=False)
    assert request.headers == {"Content-Type": "application/json"}


async def test_openai_adapter_requires_key_and_sends_org_headers() -> None:
    ep = endpoint(
        name="openai",
        type="openai",
        base_url=None,
        auth={"bearer_token_env": "OPENAI_KEY"},
        options={"organization": "org-1", "project": "proj-1"},
    )
    adapter = adapter_for(ep, environ={"OPENAI_KEY": TOKEN})
    assert isinstance(adapter, OpenAIAdapter)
    request = await adapter.prepare(BODY, stream=False)
    assert request.url == "https://api.openai.com/v1/chat/completions"
    assert request.headers["OpenAI-Organization"] == "org-1"
    assert request.headers["OpenAI-Project"] == "proj-1"
    with pytest.raises(ProviderConfigError, match=r"auth\.bearer_token_env"):
        adapter_for(endpoint(name="openai", type="openai", auth={}), environ={})


# ---------------------------------------------------------------------------
# Credentials


def test_missing_env_variable_fails_naming_it() -> None:
    with pytest.raises(ProviderConfigError) as info:
        adapter_for(endpoint(), environ={})
    assert "GPU_TOKEN" in str(info.value)
    assert "'gpu'" in str(info.value)


def test_credential_file(tmp_path: Any) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    store = CredentialStore(endpoint(auth={"bearer_token_file": str(path)}), environ={})
    secret = store.load("bearer_token")
    assert secret is not None
    assert secret.reveal() == TOKEN
    assert TOKEN not in repr(secret)
    assert TOKEN not in str(secret)
    assert store.redact(f"bad key {TOKEN}!") == "bad key ***!"
    with pytest.raises(ProviderConfigError, match="cannot read credential file"):
        CredentialStore(
            endpoint(auth={"bearer_token_file": str(tmp_path / "missing")}), environ={}
        ).load("bearer_token")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ProviderConfigError, match="is empty"):
        CredentialStore(
            endpoint(auth={"bearer_token_file": str(tmp_path / "empty")}), environ={}
        ).load("bearer_token")


def test_secret_cannot_be_pickled() -> None:
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(Secret(TOKEN))


def test_unimplemented_type_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every type has an adapter now: unregister one to see the error.
    from gateway.providers import registry

    monkeypatch.delitem(registry.ADAPTERS, "anthropic")
    monkeypatch.delitem(registry._loaded, "anthropic", raising=False)
    with pytest.raises(ProviderNotImplementedError, match="'anthropic' is not implemented"):
        adapter_for(endpoint(type="anthropic", base_url=None), environ={})


# ---------------------------------------------------------------------------
# SSE parser

EVENTS = (
    b": keep-alive\r\n\r\n"
    b'data: {"a": 1}\r\n\r\n'
    b"event: error\ndata: line one\ndata: line two\n\n"
    b"id: 7\rdata:no-space\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SseEvent(b'{"a": 1}'),
    SseEvent(b"line one\nline two", event="error"),
    SseEvent(b"no-space", id="7"),
    SseEvent(b"[DONE]", id="7"),
]


def test_sse_parser_whole() -> None:
    parser = SseParser()
    assert parser.feed(EVENTS) + parser.flush() == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_sse_parser_any_split(size: int) -> None:
    parser = SseParser()
    events: list[SseEvent] = []
    for i in range(0, len(EVENTS), size):
        events += parser.feed(EVENTS[i : i + size])
    assert events + parser.flush() == EXPECTED


def test_sse_parser_crlf_split_between_cr_and_lf() -> None:
    parser = SseParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n\r") == [SseEvent(b"x")]
    # The `\n` of the second pair must not produce a second blank line.
    assert parser.feed(b"\ndata: y\r\n\r\n") == [SseEvent(b"y")]


def test_sse_parser_bom_and_unterminated_last_event() -> None:
    parser = SseParser()
    assert parser.feed(b"\xef\xbb") == []
    assert parser.feed(b"\xbfdata: a\n\ndata: [DONE]") == [SseEvent(b"a")]
    assert parser.flush() == [SseEvent(b"[DONE]")]


def test_sse_parser_bounds_event_size() -> None:
    parser = SseParser(max_event_bytes=16)
    with pytest.raises(SseProtocolError):
        parser.feed(b"data: " + b"x" * 32)


# ---------------------------------------------------------------------------
# Stream translation


def upstream_stream(*, usage: bool, crlf: bool = False, done: bool = True) -> bytes:
    end = "\r\n" if crlf else "\n"
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Hello"}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": " world, friend"}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    if usage:
        chunks.append(
            {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": 11,
                    "completion_tokens": 3,
                    "total_tokens": 14,
                    "prompt_tokens_details": {"cached_tokens": 4},
                },
            }
        )
    text = "".join(f"data: {json.dumps(c)}{end}{end}: ping{end}{end}" for c in chunks)
    if done:
        text += f"data: [DONE]{end}{end}"
    return text.encode()


def frames_json(frames: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for frame in frames:
        assert frame.startswith(b"data: ")
        assert frame.endswith(b"\n\n")
        payload = frame[len(b"data: ") : -2]
        out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


def translate_all(body: dict[str, Any], data: bytes, size: int) -> tuple[list[bytes], Any]:
    translator = translate.OpenAIStreamTranslator.for_body(body, lambda s: s)
    frames: list[bytes] = []
    for i in range(0, len(data), size):
        frames += translator.feed(data[i : i + size])
    frames += translator.finish()
    return frames, translator


@pytest.mark.parametrize("size", [1, 9, 4096])
def test_stream_pass_through_drops_usage_chunk_client_did_not_ask_for(size: int) -> None:
    frames, translator = translate_all(BODY, upstream_stream(usage=True, crlf=True), size)
    parsed = frames_json(frames)
    assert parsed[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(p) for p in parsed[:-1]]
    assert [c.choices[0].delta.content for c in chunks] == ["", "Hello", " world, friend", None]
    assert all(c.choices for c in chunks)  # no usage-only chunk
    assert translator.usage == Usage(11, 3, cache_read_tokens=4)


def test_stream_forwards_usage_chunk_when_client_asked() -> None:
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    frames, _ = translate_all(body, upstream_stream(usage=True), 4096)
    parsed = frames_json(frames)
    usage_chunk = ChatCompletionChunk.model_validate(parsed[-2])
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == 11


def test_stream_passes_payload_bytes_untouched() -> None:
    payload = (
        b'{"id":"x","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"\\u00e9t\\u00e9"},"finish_reason":"stop"}]}'
    )
    translator = translate.OpenAIStreamTranslator.for_body(BODY, lambda s: s)
    assert translator.feed(b"data: " + payload + b"\r\n\r\n") == [b"data: " + payload + b"\n\n"]


def test_stream_without_usage_estimates_and_synthesises_usage_chunk() -> None:
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    frames, translator = translate_all(body, upstream_stream(usage=False), 7)
    usage = translator.usage
    assert usage.estimated
    assert usage.input_tokens == estimate_prompt_tokens(body)
    # "Hello" + " world, friend" = 19 characters -> ceil(19/4) = 5 > 2 chunks.
    assert usage.output_tokens == 5
    parsed = frames_json(frames)
    synthesised = ChatCompletionChunk.model_validate(parsed[-2])
    assert synthesised.id == "chatcmpl-1"
    assert synthesised.usage is not None
    assert synthesised.usage.completion_tokens == 5


def test_stream_ending_without_done_after_finish_reason_is_completed() -> None:
    frames, _ = translate_all(BODY, upstream_stream(usage=False, done=False), 4096)
    assert frames[-1] == b"data: [DONE]\n\n"
    assert frames.count(b"data: [DONE]\n\n") == 1


def test_stream_truncated_before_finish_is_a_failure() -> None:
    data = upstream_stream(usage=False, done=False)
    cut = data.index(b'"finish_reason"')
    translator = translate.OpenAIStreamTranslator.for_body(BODY, lambda s: s)
    translator.feed(data[:cut])
    with pytest.raises(AttemptFailed) as info:
        translator.finish()
    assert info.value.failure.code == "upstream_stream_truncated"
    assert info.value.failure.retryable


def test_stream_error_event_raises_redacted() -> None:
    translator = translate.OpenAIStreamTranslator.for_body(BODY, lambda s: s.replace(TOKEN, "***"))
    event = json.dumps({"error": {"message": f"overloaded for {TOKEN}", "code": "overloaded"}})
    with pytest.raises(AttemptFailed) as info:
        translator.feed(f"data: {event}\n\n".encode())
    assert info.value.failure.code == "overloaded"
    assert TOKEN not in info.value.failure.message


def test_stream_error_keeps_frames_that_preceded_it_in_the_same_read() -> None:
    translator = translate.OpenAIStreamTranslator.for_body(BODY, lambda s: s)
    data = upstream_stream(usage=False)
    good = data[: data.index(b"data: ", 10)]  # the first event (and its comment)
    error = b'data: {"error": {"message": "boom"}}\n\n'
    with pytest.raises(AttemptFailed) as info:
        translator.feed(good + error)
    assert len(info.value.frames) == 1
    assert info.value.frames[0].startswith(b'data: {"id": "chatcmpl-1"')


def test_stream_rejects_non_json_event() -> None:
    translator = translate.OpenAIStreamTranslator.for_body(BODY, lambda s: s)
    with pytest.raises(AttemptFailed) as info:
        translator.feed(b"data: <html>\n\n")
    assert info.value.failure.code == "bad_upstream_response"


# ---------------------------------------------------------------------------
# Non-streamed answers and errors


def test_parse_completion_and_usage() -> None:
    raw = json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
        }
    ).encode()
    completion, usage = translate.parse_completion(raw)
    ChatCompletion.model_validate(completion)
    assert usage == Usage(9, 1)
    assert Usage(1000, 2000).cost_usd(Pricing(0.5, 1.0)) == pytest.approx(2.5)


@pytest.mark.parametrize(
    "raw", [b"not json", b"[1]", b'{"object": "chat.completion"}', b'{"error": {"message": "x"}}']
)
def test_parse_completion_rejects_malformed(raw: bytes) -> None:
    with pytest.raises(AttemptFailed) as info:
        translate.parse_completion(raw)
    assert info.value.failure.status_for_client == 502
    assert info.value.failure.retryable


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        (
            {"error": {"message": "context too long", "type": "x", "code": "context_length"}},
            "context too long",
            "context_length",
        ),
        (
            {"object": "error", "message": "bad temp", "type": "BadRequestError", "code": 400},
            "bad temp",
            None,
        ),
        ({"error": {"message": "m", "type": "server_error", "code": None}}, "m", None),
        (
            {"error": "Input validation error", "error_type": "validation"},
            "Input validation error",
            None,
        ),
        ("plain text failure", "plain text failure", None),
    ],
)
def test_error_details_of_each_server_shape(body: Any, message: str, code: str | None) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    assert translate.error_details(raw) == (message, code)


def test_classify_errors() -> None:
    def classify(status: int, body: Any = None, **headers: str) -> Any:
        raw = json.dumps(body or {"error": {"message": f"m{status}"}}).encode()
        return translate.classify_error(
            status, CIMultiDict(headers), raw, redact=lambda s: s.replace(TOKEN, "***")
        )

    bad = classify(400)
    assert (bad.status_for_client, bad.retryable, bad.message) == (400, False, "m400")
    limited = classify(429, **{"Retry-After": "7"})
    assert (limited.status_for_client, limited.retryable, limited.retry_after) == (429, True, 7.0)
    assert classify(429, **{"retry-after-ms": "1500"}).retry_after == 1.5
    down = classify(503)
    assert (down.status_for_client, down.retryable) == (502, True)
    # The upstream refusing the gateway's key is the gateway's problem, not the
    # client's; and its message (which may echo the key) is not passed on.
    auth = classify(401, {"error": {"message": f"Incorrect API key provided: {TOKEN}"}})
    assert (auth.status_for_client, auth.code, auth.retryable) == (
        502,
        "upstream_auth_failed",
        True,
    )
    assert TOKEN not in auth.message
    echoed = classify(400, {"error": {"message": f"bad {TOKEN}"}})
    assert TOKEN not in echoed.message
    redirect = classify(302)
    assert (redirect.status_for_client, redirect.code) == (502, "upstream_redirect")


def test_parse_retry_after_http_date() -> None:
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_usage_as_openai() -> None:
    assert Usage(10, 5, cache_read_tokens=3).as_openai() == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 3},
    }

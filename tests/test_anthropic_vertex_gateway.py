"""Anthropic and Vertex AI (Gemini and Claude) end to end: the official `openai`
SDK as the client, the gateway with its real OPA sidecar, and fake providers on
loopback that speak the real wire protocols and check authentication for real
(tests/fake_anthropic.py, tests/fake_vertex.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.anthropic_vertex_harness import (
    ANTHROPIC_KEY,
    ANTHROPIC_MODEL,
    GEMINI_MODEL,
    LEGACY_MODEL,
    LOCATION,
    PROJECT,
    VERTEX_CLAUDE_MODEL,
    Providers,
    start_provider_gateway,
)
from tests.fake_anthropic import Failure, FakeAnthropic
from tests.fake_vertex import (
    SIGNATURE,
    FakeVertex,
    GoogleFailure,
    ServiceAccount,
    make_service_account,
)
from tests.gateway_harness import Gateway

pytestmark = pytest.mark.integration

CLAUDES = ("anthropic", "vertex-claude")
PROVIDERS = ("anthropic", "vertex-claude", "vertex-gemini")
SYSTEM = {"role": "system", "content": "You are terse."}
HELLO = {"role": "user", "content": "Hello there"}
PREFIX = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers"


@dataclass
class Env:
    gateway: Gateway
    anthropic: FakeAnthropic
    vertex: FakeVertex
    account: ServiceAccount

    def client(self) -> openai.AsyncOpenAI:
        sdk = openai.AsyncOpenAI(
            base_url=self.gateway.base_url, api_key=self.gateway.keys["acme"], max_retries=0
        )
        self.gateway.clients.append(sdk)
        return sdk

    async def create(self, route: str, **kwargs: Any) -> Any:
        kwargs.setdefault("messages", [SYSTEM, HELLO])
        return await self.client().chat.completions.with_raw_response.create(model=route, **kwargs)

    async def audit(self) -> list[dict[str, Any]]:
        return await self.gateway.audit_records()

    def received(self, provider: str) -> list[Any]:
        if provider in ("anthropic", "anthropic-legacy"):
            return self.anthropic.requests
        publisher = "anthropic" if provider == "vertex-claude" else "google"
        return [r for r in self.vertex.requests if f"/publishers/{publisher}/" in r.path]

    def invalid(self) -> list[str]:
        return self.anthropic.invalid + self.vertex.invalid


def forged(account: ServiceAccount, directory: Path) -> ServiceAccount:
    """The same service account's identity and key id, signed with another key."""
    other = make_service_account(directory, account.info["token_uri"], "forger")
    info = {**account.info, "private_key": other.info["private_key"]}
    path = directory / "forged-sa.json"
    path.write_text(json.dumps(info))
    return ServiceAccount(path, info, other.public_pem)


@pytest.fixture
async def env(tmp_path: Path, opa_bin: str) -> AsyncIterator[Env]:
    anthropic = await FakeAnthropic(api_key=ANTHROPIC_KEY).start()
    vertex = await FakeVertex(project=PROJECT, location=LOCATION).start()
    account = make_service_account(tmp_path, vertex.token_uri)
    vertex.trust(account)
    gateway = await start_provider_gateway(
        tmp_path, Providers(anthropic, vertex, account, forged(account, tmp_path))
    )
    try:
        yield Env(gateway, anthropic, vertex, account)
    finally:
        await gateway.close()
        await vertex.close()
        await anthropic.close()


def claude_body(provider: str, **fields: Any) -> dict[str, Any]:
    """What the gateway sends Claude: directly, or through Vertex's rawPredict."""
    if provider == "anthropic":
        return {"model": ANTHROPIC_MODEL, "max_tokens": 1000, **fields}
    return {"anthropic_version": "2026-10-21", "max_tokens": 4096, **fields}


def upstream_path(provider: str, *, stream: bool) -> str:
    if provider == "anthropic":
        return "/v1/messages"
    if provider == "vertex-claude":
        method = "streamRawPredict" if stream else "rawPredict"
        return f"{PREFIX}/anthropic/models/{VERTEX_CLAUDE_MODEL}:{method}"
    method = "streamGenerateContent" if stream else "generateContent"
    return f"{PREFIX}/google/models/{GEMINI_MODEL}:{method}"


ANSWER_MODEL = {
    "anthropic": ANTHROPIC_MODEL,
    "vertex-claude": VERTEX_CLAUDE_MODEL,
    "vertex-gemini": f"{GEMINI_MODEL}-001",
}
COST = {"anthropic": (3.0, 15.0), "vertex-claude": (0.0, 0.0), "vertex-gemini": (1.0, 2.0)}


def assert_authenticated(env: Env, provider: str, received: Any) -> None:
    headers = received.headers
    if provider == "anthropic":
        assert headers["x-api-key"] == ANTHROPIC_KEY
        assert headers["anthropic-version"] == "2026-10-21"
        assert "Authorization" not in headers
    else:
        token = headers["Authorization"].removeprefix("Bearer ")
        assert token in env.vertex.tokens  # issued by the token endpoint to the gateway
        assert "x-api-key" not in headers
        assert "anthropic-version" not in headers
    assert env.gateway.keys["acme"] not in json.dumps(dict(headers))


# ---------------------------------------------------------------------------
# Completions


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_plain_completion_with_a_system_prompt(env: Env, provider: str) -> None:
    raw = await env.create(provider, temperature=0.3)
    reply = raw.parse()
    assert raw.headers["X-Kamiwaza-Endpoint"] == provider
    assert reply.model == ANSWER_MODEL[provider]
    assert [(c.message.role, c.message.content, c.finish_reason) for c in reply.choices] == [
        ("assistant", "You said: Hello there", "stop")
    ]
    assert reply.choices[0].message.tool_calls is None
    assert reply.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 5,
        "completion_tokens": 4,
        "total_tokens": 9,
    }
    (received,) = env.received(provider)
    assert received.path == upstream_path(provider, stream=False)
    assert_authenticated(env, provider, received)
    if provider == "vertex-gemini":
        assert received.json == {
            "contents": [{"role": "user", "parts": [{"text": "Hello there"}]}],
            "systemInstruction": {"parts": [{"text": "You are terse."}]},
            "generationConfig": {"temperature": 0.3},
        }
    else:
        # API version 2026-10-21 takes no temperature: it is left out.
        assert received.json == claude_body(
            provider,
            system="You are terse.",
            messages=[{"role": "user", "content": "Hello there"}],
        )
    assert env.invalid() == []
    (record,) = await env.audit()
    assert (record["endpoint"], record["status"], record["tokens"]) == (
        provider,
        200,
        {"input": 5, "output": 4},
    )
    price_in, price_out = COST[provider]
    assert record["cost_usd"] == pytest.approx((5 * price_in + 4 * price_out) / 1000)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_streamed_completion_with_usage(env: Env, provider: str) -> None:
    raw = await env.create(provider, stream=True, stream_options={"include_usage": True})
    assert raw.headers["X-Kamiwaza-Endpoint"] == provider
    assert raw.headers["Content-Type"].startswith("text/event-stream")
    chunks = [chunk async for chunk in raw.parse()]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert [d.content for d in deltas if d.content] == ["You", " said:", " Hello", " there"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 5,
        "completion_tokens": 4,
        "total_tokens": 9,
    }
    assert {c.model for c in chunks} == {ANSWER_MODEL[provider]}
    assert len({c.id for c in chunks}) == 1
    (received,) = env.received(provider)
    assert received.path == upstream_path(provider, stream=True)
    if provider == "vertex-gemini":
        assert received.query == "alt=sse"
        assert received.json == {
            "contents": [{"role": "user", "parts": [{"text": "Hello there"}]}],
            "systemInstruction": {"parts": [{"text": "You are terse."}]},
        }
    else:
        assert received.json == claude_body(
            provider,
            system="You are terse.",
            messages=[{"role": "user", "content": "Hello there"}],
            stream=True,
        )
    assert env.invalid() == []
    (record,) = await env.audit()
    assert (record["stream"], record["tokens"]) == (True, {"input": 5, "output": 4})


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_multi_turn_conversation(env: Env, provider: str) -> None:
    messages = [
        SYSTEM,
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
    ]
    reply = (await env.create(provider, messages=messages)).parse()
    assert reply.choices[0].message.content == "You said: What is my name?"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (13, 6)
    (received,) = env.received(provider)
    if provider == "vertex-gemini":
        assert received.json == {
            "contents": [
                {"role": "user", "parts": [{"text": "My name is Ada."}]},
                {"role": "model", "parts": [{"text": "Hello Ada."}]},
                {"role": "user", "parts": [{"text": "What is my name?"}]},
            ],
            "systemInstruction": {"parts": [{"text": "You are terse."}]},
        }
    else:
        assert received.json == claude_body(
            provider,
            system="You are terse.",
            messages=[
                {"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": "Hello Ada."},
                {"role": "user", "content": "What is my name?"},
            ],
        )
    assert env.invalid() == []


async def test_legacy_api_version_takes_sampling_parameters_and_a_key_file(env: Env) -> None:
    raw = await env.create("anthropic-legacy", temperature=1.5, top_p=0.9, stop="never")
    assert raw.parse().choices[0].message.content == "You said: Hello there"
    (received,) = env.anthropic.requests
    assert received.path == "/v1/messages"  # base_url ending in /v1 works too
    assert received.headers["anthropic-version"] == "2023-06-01"
    assert received.headers["x-api-key"] == ANTHROPIC_KEY  # read from auth.api_key_file
    assert received.json == {
        "model": LEGACY_MODEL,
        "max_tokens": 4096,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Hello there"}],
        "temperature": 1.0,  # OpenAI's 0-2 clamped to Anthropic's 0-1
        "top_p": 0.9,
        "stop_sequences": ["never"],
    }
    assert env.invalid() == []


# ---------------------------------------------------------------------------
# Tools

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
QUESTION = {"role": "user", "content": 'Call get_weather with {"city": "Paris"}'}


async def _tool_call(env: Env, provider: str, *, stream: bool) -> tuple[str, str, str]:
    """(id, name, arguments) of the one tool call the model makes, and checks its frame."""
    raw = await env.create(provider, messages=[QUESTION], tools=TOOLS, stream=stream)
    if not stream:
        reply = raw.parse()
        choice = reply.choices[0]
        assert (choice.finish_reason, choice.message.content) == ("tool_calls", None)
        (call,) = choice.message.tool_calls
        return call.id, call.function.name, call.function.arguments
    chunks = [c async for c in raw.parse()]
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert {tc.index for tc in calls} == {0}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert calls[0].type == "function"
    arguments = "".join(tc.function.arguments or "" for tc in calls)
    return calls[0].id, calls[0].function.name, arguments


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_tool_call_round_trip(env: Env, provider: str, stream: bool) -> None:
    call_id, name, arguments = await _tool_call(env, provider, stream=stream)
    assert (name, json.loads(arguments)) == ("get_weather", {"city": "Paris"})
    if provider == "vertex-gemini":
        # Gemini's thought signature rides in the id, to come back with the call.
        assert call_id.startswith("call_")
        assert call_id.endswith("." + SIGNATURE)
    else:
        assert call_id == "toolu_000000000000000000000001"
    followup = [
        QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": '{"temp_c": 21}'},
    ]
    reply = (await env.create(provider, messages=followup, tools=TOOLS)).parse()
    assert reply.choices[0].message.content == 'The tool said: {"temp_c": 21}'
    assert reply.choices[0].finish_reason == "stop"
    first, second = env.received(provider)
    if provider == "vertex-gemini":
        tools = [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Weather of a city",
                        "parametersJsonSchema": TOOLS[0]["function"]["parameters"],
                    }
                ]
            }
        ]
        assert second.json == {
            "contents": [
                {"role": "user", "parts": [{"text": QUESTION["content"]}]},
                {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                            "thoughtSignature": SIGNATURE,
                        }
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}
                    ],
                },
            ],
            "tools": tools,
        }
        assert first.json["tools"] == tools
    else:
        tools = [
            {
                "name": "get_weather",
                "description": "Weather of a city",
                "input_schema": TOOLS[0]["function"]["parameters"],
            }
        ]
        assert second.json == claude_body(
            provider,
            messages=[
                {"role": "user", "content": QUESTION["content"]},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": call_id,
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": call_id, "content": '{"temp_c": 21}'}
                    ],
                },
            ],
            tools=tools,
        )
        assert first.json["tools"] == tools
    assert env.invalid() == []


# ---------------------------------------------------------------------------
# Stop reasons and usage


@pytest.mark.parametrize(
    ("kwargs", "content", "finish"),
    [
        ({"max_tokens": 2}, "You said:", "length"),
        ({"max_completion_tokens": 3}, "You said: Hello", "length"),
        ({"stop": ["Hello"]}, "You said: ", "stop"),
        ({}, "You said: Hello there", "stop"),
    ],
)
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stop_reasons(
    env: Env, provider: str, kwargs: dict[str, Any], content: str, finish: str
) -> None:
    reply = (await env.create(provider, **kwargs)).parse()
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (content, finish)
    chunks = [c async for c in (await env.create(provider, stream=True, **kwargs)).parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (text, chunks[-1].choices[0].finish_reason) == (content, finish)
    assert env.invalid() == []


@pytest.mark.parametrize("provider", CLAUDES)
async def test_claude_cache_tokens_count_as_input(env: Env, provider: str) -> None:
    responder = env.anthropic.responder if provider == "anthropic" else env.vertex.claude
    responder.cache_read, responder.cache_write = 100, 20
    for stream in (False, True):
        raw = await env.create(provider, stream=stream, stream_options=None)
        if stream:
            raw = await env.create(provider, stream=True, stream_options={"include_usage": True})
            usage = [c async for c in raw.parse()][-1].usage
        else:
            usage = raw.parse().usage
        assert usage.model_dump(exclude_none=True) == {
            "prompt_tokens": 125,
            "completion_tokens": 4,
            "total_tokens": 129,
            "prompt_tokens_details": {"cached_tokens": 100},
        }
    assert [r["tokens"] for r in await env.audit()] == [{"input": 125, "output": 4}] * 3


async def test_gemini_cached_tokens(env: Env) -> None:
    env.vertex.gemini.cached_tokens = 3
    usage = (await env.create("vertex-gemini")).parse().usage
    assert usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 5,
        "completion_tokens": 4,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 3},
    }


# ---------------------------------------------------------------------------
# Errors

AUTH_MESSAGE = "the upstream refused the gateway's credential (HTTP {})"
ANTHROPIC_ERRORS = [
    (Failure(401, "authentication_error", "invalid x-api-key"), 502, "upstream_auth_failed", None),
    (Failure(403, "permission_error", "no access"), 502, "upstream_auth_failed", None),
    (
        Failure(402, "billing_error", "Your credit balance is too low"),
        502,
        "upstream_billing_error",
        "the upstream refused the gateway's account (billing)",
    ),
    (
        Failure(429, "rate_limit_error", "rate limit exceeded", headers={"retry-after": "7"}),
        429,
        "rate_limit_exceeded",
        "rate limit exceeded",
    ),
    (Failure(529, "overloaded_error", "Overloaded"), 503, "upstream_overloaded", "Overloaded"),
    (
        Failure(400, "invalid_request_error", "messages: text content blocks must be non-empty"),
        400,
        "invalid_request_error",
        "messages: text content blocks must be non-empty",
    ),
    (
        Failure(400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"),
        400,
        "context_length_exceeded",
        "prompt is too long: 250000 tokens > 200000 maximum",
    ),
    (
        Failure(413, "invalid_request_error", "Request exceeds the maximum size"),
        413,
        "request_too_large",
        "Request exceeds the maximum size",
    ),
    (
        Failure(404, "not_found_error", "model: claude-nope"),
        404,
        "not_found_error",
        "model: claude-nope",
    ),
    (Failure(500, "api_error", "Internal server error"), 502, "api_error", "Internal server error"),
    (
        Failure(504, "timeout_error", "Request timed out"),
        504,
        "upstream_timeout",
        "Request timed out",
    ),
]
GOOGLE_ERRORS = [
    (GoogleFailure(401, "UNAUTHENTICATED", "bad token"), 502, "upstream_auth_failed", None),
    (GoogleFailure(403, "PERMISSION_DENIED", "denied"), 502, "upstream_auth_failed", None),
    (
        GoogleFailure(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for aiplatform.googleapis.com/generate_content_requests_per_minute",
            details=[{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}],
        ),
        429,
        "rate_limit_exceeded",
        "Quota exceeded for aiplatform.googleapis.com/generate_content_requests_per_minute",
    ),
    (
        GoogleFailure(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        503,
        "upstream_unavailable",
        "The model is overloaded. Please try again later.",
    ),
    (
        GoogleFailure(
            400,
            "INVALID_ARGUMENT",
            "The input token count (1048577) exceeds the maximum number of tokens allowed "
            "(1048576).",
        ),
        400,
        "context_length_exceeded",
        "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576).",
    ),
    (
        GoogleFailure(400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
        400,
        "invalid_argument",
        "Request contains an invalid argument.",
    ),
    (
        GoogleFailure(404, "NOT_FOUND", "Publisher Model was not found"),
        404,
        "not_found",
        "Publisher Model was not found",
    ),
    (GoogleFailure(500, "INTERNAL", "Internal error encountered."), 502, "internal", None),
    (
        GoogleFailure(504, "DEADLINE_EXCEEDED", "Deadline exceeded"),
        504,
        "upstream_timeout",
        "Deadline exceeded",
    ),
]
EXCEPTIONS = {
    400: openai.BadRequestError,
    404: openai.NotFoundError,
    413: openai.APIStatusError,
    429: openai.RateLimitError,
    502: openai.InternalServerError,
    503: openai.InternalServerError,
    504: openai.InternalServerError,
}


async def _assert_error(
    env: Env,
    provider: str,
    failure: Failure | GoogleFailure,
    status: int,
    code: str,
    message: str | None,
    *,
    stream: bool,
) -> None:
    (env.anthropic if provider == "anthropic" else env.vertex).fail(failure)
    with pytest.raises(EXCEPTIONS[status]) as info:
        await env.create(provider, stream=stream)
    err = info.value
    assert err.status_code == status  # type: ignore[attr-defined]
    if message is None:
        message = (
            AUTH_MESSAGE.format(failure.status)
            if code == "upstream_auth_failed"
            else "Internal error encountered."
        )
    client_error = status < 500 and status != 429
    expected: dict[str, Any] = {
        "message": message,
        "type": "invalid_request_error" if client_error else "upstream_error",
        "code": code,
    }
    if not client_error:  # a failure of the route: which endpoints were tried, and why
        expected["attempts"] = [{"endpoint": provider, "status": failure.status, "error": code}]
    assert err.body == expected  # type: ignore[attr-defined]
    retry_after = err.response.headers.get("Retry-After")  # type: ignore[attr-defined]
    assert retry_after == {"rate_limit_error": "7", "RESOURCE_EXHAUSTED": "30"}.get(
        getattr(failure, "error_type", None) or getattr(failure, "google_status", "")
    )
    (record,) = await env.audit()
    assert record["status"] == status
    assert [(a["endpoint"], a["status"], a["error"]) for a in record["attempts"]] == [
        (provider, failure.status, code)
    ]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("provider", CLAUDES)
@pytest.mark.parametrize(("failure", "status", "code", "message"), ANTHROPIC_ERRORS)
async def test_each_anthropic_error_class(
    env: Env,
    provider: str,
    failure: Failure,
    status: int,
    code: str,
    message: str | None,
    stream: bool,
) -> None:
    await _assert_error(env, provider, failure, status, code, message, stream=stream)


@pytest.mark.parametrize("provider", ["vertex-gemini", "vertex-claude"])
@pytest.mark.parametrize(("failure", "status", "code", "message"), GOOGLE_ERRORS)
async def test_each_vertex_error_class(
    env: Env,
    provider: str,
    failure: GoogleFailure,
    status: int,
    code: str,
    message: str | None,
) -> None:
    await _assert_error(env, provider, failure, status, code, message, stream=False)


@pytest.mark.parametrize(
    ("provider", "failure", "status", "code"),
    [
        (
            "anthropic",
            Failure(529, "overloaded_error", "Overloaded", in_stream=True),
            503,
            "upstream_overloaded",
        ),
        ("vertex-claude", Failure(500, "api_error", "Internal", in_stream=True), 502, "api_error"),
        (
            "vertex-gemini",
            GoogleFailure(503, "UNAVAILABLE", "The model is overloaded.", in_stream=True),
            503,
            "upstream_unavailable",
        ),
    ],
)
async def test_an_error_event_before_any_content_is_a_clean_error(
    env: Env, provider: str, failure: Failure | GoogleFailure, status: int, code: str
) -> None:
    """HTTP 200, then an error event: nothing reached the client, so it gets a status."""
    (env.anthropic if provider == "anthropic" else env.vertex).fail(failure)
    with pytest.raises(openai.InternalServerError) as info:
        await env.create(provider, stream=True)
    assert (info.value.status_code, info.value.body["code"]) == (status, code)  # type: ignore[index]
    (record,) = await env.audit()
    assert [(a["endpoint"], a["status"], a["error"]) for a in record["attempts"]] == [
        (provider, 200, code)
    ]


# ---------------------------------------------------------------------------
# Failover


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("route", "first", "second", "failure", "error"),
    [
        (
            "anthropic-then-gemini",
            "anthropic",
            "vertex-gemini",
            Failure(529, "overloaded_error", "Overloaded", in_stream=True),
            "upstream_overloaded",
        ),
        (
            "gemini-then-anthropic",
            "vertex-gemini",
            "anthropic",
            GoogleFailure(429, "RESOURCE_EXHAUSTED", "Quota exceeded", in_stream=True),
            "rate_limit_exceeded",
        ),
        (
            "vertex-claude-then-anthropic",
            "vertex-claude",
            "anthropic",
            GoogleFailure(503, "UNAVAILABLE", "Service unavailable"),
            "upstream_unavailable",
        ),
    ],
)
async def test_failover_to_another_provider(
    env: Env,
    route: str,
    first: str,
    second: str,
    failure: Failure | GoogleFailure,
    error: str,
    stream: bool,
) -> None:
    (env.anthropic if first == "anthropic" else env.vertex).fail(failure)
    raw = await env.create(route, stream=stream)
    assert raw.headers["X-Kamiwaza-Endpoint"] == second
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    else:
        text = raw.parse().choices[0].message.content
    assert text == "You said: Hello there"
    (record,) = await env.audit()
    in_stream = stream and getattr(failure, "in_stream", False)
    assert [(a["endpoint"], a["status"], a["error"]) for a in record["attempts"]] == [
        (first, 200 if in_stream else failure.status, error),
        (second, 200, None),
    ]
    assert (record["endpoint"], record["status"]) == (second, 200)


async def test_a_key_the_token_endpoint_refuses_fails_over(env: Env) -> None:
    """Same account id and key id, another private key: the signature check fails."""
    raw = await env.create("untrusted-then-anthropic")
    assert raw.headers["X-Kamiwaza-Endpoint"] == "anthropic"
    assert env.vertex.rejected_assertions == ["Signature verification failed"]
    assert env.vertex.requests == []  # no prediction request without a token
    (record,) = await env.audit()
    assert [(a["endpoint"], a["status"], a["error"]) for a in record["attempts"]] == [
        ("vertex-untrusted", None, "upstream_auth_failed"),
        ("anthropic", 200, None),
    ]


async def test_vertex_tokens_are_fetched_once_and_reused(env: Env) -> None:
    for provider in ("vertex-gemini", "vertex-claude", "vertex-gemini", "vertex-claude"):
        await env.create(provider)
    # One token per endpoint (each has its own credentials), reused afterwards.
    assert env.vertex.token_requests == 2
    assert env.vertex.rejected_assertions == []
    tokens = {r.headers["Authorization"] for r in env.vertex.requests}
    assert len(tokens) == 2


# ---------------------------------------------------------------------------
# Secrets


async def test_provider_secrets_never_reach_clients_logs_or_audit(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outputs: list[Any] = []
    await env.create("vertex-gemini")
    await env.create("vertex-claude")
    tokens = list(env.vertex.tokens)
    # Upstream error messages that echo the credential back.
    env.anthropic.fail(Failure(400, "invalid_request_error", f"bad key {ANTHROPIC_KEY} here"))
    env.vertex.fail(GoogleFailure(400, "INVALID_ARGUMENT", f"token {tokens[0]} is odd"))
    env.vertex.fail(Failure(400, "invalid_request_error", f"token {tokens[1]} is odd"))
    env.anthropic.fail(Failure(401, "authentication_error", f"invalid x-api-key {ANTHROPIC_KEY}"))
    for provider in ("anthropic", "vertex-gemini", "vertex-claude", "anthropic"):
        with pytest.raises(openai.APIStatusError) as info:
            await env.create(provider)
        outputs.append(info.value.body)
    assert [o["message"] for o in outputs] == [
        "bad key *** here",
        "token *** is odd",
        "token *** is odd",
        "the upstream refused the gateway's credential (HTTP 401)",
    ]
    private_key_line = env.account.info["private_key"].splitlines()[1]
    text = caplog.text + json.dumps(outputs) + json.dumps(await env.audit())
    for secret in (ANTHROPIC_KEY, private_key_line, *tokens):
        assert secret not in text


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_logprobs_are_refused_not_dropped(env: Env, provider: str) -> None:
    """On a route to a provider without log probabilities the client is told
    (400 unsupported_request), nothing goes upstream, and nothing fails over."""
    with pytest.raises(openai.BadRequestError) as info:
        await env.create(provider, logprobs=True)
    name = "Gemini on Vertex AI" if provider == "vertex-gemini" else "Anthropic"
    message = f"'logprobs' cannot be honoured: {name} does not return log probabilities"
    assert info.value.body == {
        "message": message,
        "type": "invalid_request_error",
        "code": "unsupported_request",
    }
    assert env.received(provider) == []
    (record,) = await env.audit()
    assert (record["status"], record["error"]["code"]) == (400, "unsupported_request")
    assert [(a["endpoint"], a["error"]) for a in record["attempts"]] == [
        (provider, "unsupported_request")
    ]

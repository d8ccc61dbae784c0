"""The Messages front through a running gateway, driven by the official
`anthropic` SDK as a new user would drive it: a real OPA sidecar, the fake
Anthropic API (native: the body passes through with only the model replaced)
and a fake vLLM (translated to Chat Completions and back).

The client's model names the route (policy below), so each test picks the
native endpoint, the translated one, or the failover pair by naming it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import pytest
import pytest_asyncio
from anthropic.types import MessageTokensCount

from gateway.auth import KeyStore
from gateway.fronts.messages import CountTokensFront
from tests import claude_code_body as cc
from tests.codec_relay import sse_events
from tests.fake_anthropic import Failure, FakeAnthropic
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import Gateway, serve_gateway

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

ANTHROPIC_KEY = "sk-ant-canary-sdk-gateway-31"  # the gateway's: never seen by a client
VLLM_TOKEN = "vllm-canary-sdk-gateway-77"
CLAUDE = "claude-sonnet-4-5-20250929"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
POLICY = """\
version: v1
rules:
  - name: native
    match: {model: native}
    route_to: claude
  - name: translated
    match: {model: translated}
    route_to: vllm
  - name: native-then-translated
    match: {model: native-then-translated}
    route_to: claude
    fallback: [vllm]
  - default:
      route_to: claude
"""
# The version the SDK sends by default (it must reach the native endpoint unchanged).
SDK_VERSION = str(anthropic.AsyncAnthropic(api_key="-").default_headers["anthropic-version"])
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather of a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
HI: list[Any] = [{"role": "user", "content": "Hello there"}]
TEXT_EVENTS = (
    ["message_start", "content_block_start"]
    + ["content_block_delta"] * 4
    + [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
)


@dataclass
class Stack:
    gateway: Gateway
    claude: FakeAnthropic
    vllm: FakeUpstream
    key: str
    seen: int = 0

    def sdk(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        kwargs.setdefault("api_key", self.key)
        client = anthropic.AsyncAnthropic(base_url=self.gateway.url(""), max_retries=0, **kwargs)
        self.gateway.clients.append(client)
        return client

    async def new_records(self) -> list[dict[str, Any]]:
        records = await self.gateway.audit_records()
        fresh, self.seen = records[self.seen :], len(records)
        return fresh


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(opa_bin: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    work = tmp_path_factory.mktemp("messages-sdk")
    claude = await FakeAnthropic(api_key=ANTHROPIC_KEY).start()
    vllm = await FakeUpstream(token=VLLM_TOKEN, model=LLAMA).start()
    timeouts = "    timeouts: {connect_ms: 1000, first_token_ms: 5000, total_ms: 10000}"
    (work / "routing.yaml").write_text(POLICY)
    (work / "endpoints.yaml").write_text(
        "\n".join(
            [
                "endpoints:",
                "  claude:",
                "    type: anthropic",
                f"    base_url: {claude.url}",
                f"    model: {CLAUDE}",
                "    auth: {api_key_env: ANTHROPIC_API_KEY}",
                "    pricing: {input_per_1k: 3.0, output_per_1k: 15.0}",
                timeouts,
                "  vllm:",
                "    type: openai-compatible",
                "    flavor: vllm",
                f"    base_url: {vllm.url}",
                f"    model: {LLAMA}",
                "    in_vpc: true",
                "    auth: {bearer_token_env: VLLM_TOKEN}",
                "    pricing: {input_per_1k: 0.1, output_per_1k: 0.2}",
                timeouts,
            ]
        )
        + "\n"
    )
    store = KeyStore.load(work / "keys.json", missing_ok=True)
    key = store.create(tenant="acme", user="u-1", roles=["dev"])[1]
    gateway = await serve_gateway(
        work,
        keys={"acme": key},
        environ={"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "VLLM_TOKEN": VLLM_TOKEN},
        # Failover tests fail the native endpoint on purpose; OPA on a busy machine.
        overrides={"breaker_failures": 1000, "opa_timeout_ms": 2000},
    )
    try:
        yield Stack(gateway, claude, vllm, key)
    finally:
        await gateway.close()
        await claude.close()
        await vllm.close()


@pytest_asyncio.fixture(loop_scope="module")
async def fresh(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    stack.claude.reset()
    stack.vllm.requests.clear()
    stack.vllm.queue.clear()
    await stack.new_records()
    return stack


def only_model_replaced(sent: dict[str, Any], model: str = CLAUDE) -> dict[str, Any]:
    return {**sent, "model": model}


def assert_native_headers(stack: Stack, received: Any, **client: str) -> None:
    headers = received.headers
    assert headers["x-api-key"] == ANTHROPIC_KEY
    assert "Authorization" not in headers
    for name, value in client.items():
        assert headers[name] == value
    assert stack.key not in json.dumps(dict(headers))


# ---------------------------------------------------------------------------
# Native: the fake Anthropic API gets the client's body with only the model replaced.


async def test_native_create_passes_the_body_and_headers_through(fresh: Stack) -> None:
    sent: dict[str, Any] = {
        "model": "native",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": cc.PNG},
                    },
                    {"type": "text", "text": "what is this"},
                ],
            }
        ],
        "metadata": {"user_id": "u-1"},
    }
    raw = await fresh.sdk().messages.with_raw_response.create(
        **sent, extra_headers={"anthropic-beta": "prompt-caching-2024-07-31,beta-b"}
    )
    message = await raw.parse()
    assert raw.headers["X-Kamiwaza-Endpoint"] == "claude"
    assert message.id.startswith("msg_fake")
    assert message.model_dump(exclude_none=True, exclude={"id"}) == {
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [{"type": "text", "text": "You said: what is this"}],
        "stop_reason": "end_turn",
        "usage": {
            # The fake counts the words of the system blocks' repr (11 with this one).
            "input_tokens": 11,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    (received,) = fresh.claude.requests
    assert received.path == "/v1/messages"
    assert received.json == only_model_replaced(sent)
    assert_native_headers(
        fresh,
        received,
        **{"anthropic-version": SDK_VERSION, "anthropic-beta": "prompt-caching-2024-07-31,beta-b"},
    )
    assert fresh.claude.invalid == []
    (record,) = await fresh.new_records()
    assert (record["operation"], record["endpoint"], record["status"], record["tokens"]) == (
        "messages",
        "claude",
        200,
        {"input": 11, "output": 5},
    )
    assert record["cost_usd"] == pytest.approx((11 * 3.0 + 5 * 15.0) / 1000)
    assert ANTHROPIC_KEY not in json.dumps(record) and fresh.key not in json.dumps(record)


async def test_native_stream_event_by_event(fresh: Stack) -> None:
    sent = {"model": "native", "max_tokens": 64, "messages": HI}
    async with fresh.sdk().messages.stream(**sent) as stream:  # type: ignore[arg-type]
        types = [event.type async for event in stream]
        final = await stream.get_final_message()
    # The SDK's own events: raw ones plus the helpers it derives (text, ...).
    assert [t for t in types if t not in ("text",)] == TEXT_EVENTS
    assert types.count("text") == 4
    assert final.id.startswith("msg_fake")
    assert final.model_dump(exclude_none=True, exclude={"id"}) == {
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [{"type": "text", "text": "You said: Hello there"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 2,
            "output_tokens": 4,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    (received,) = fresh.claude.requests
    assert received.json == only_model_replaced({**sent, "stream": True})
    assert_native_headers(fresh, received, **{"anthropic-version": SDK_VERSION})
    assert "anthropic-beta" not in received.headers
    (record,) = await fresh.new_records()
    assert (record["operation"], record["endpoint"], record["status"], record["tokens"]) == (
        "messages",
        "claude",
        200,
        {"input": 2, "output": 4},
    )


async def test_native_tool_use_round_trip(fresh: Stack) -> None:
    client = fresh.sdk()
    ask: Any = {"role": "user", "content": 'Use get_weather {"city": "Paris"}'}
    async with client.messages.stream(
        model="native", max_tokens=50, messages=[ask], tools=TOOLS
    ) as stream:
        final = await stream.get_final_message()
    (use,) = final.content
    assert use.id.startswith("toolu_")  # type: ignore[union-attr]
    assert use.model_dump(exclude_none=True, exclude={"id"}) == {
        "type": "tool_use",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert final.stop_reason == "tool_use"
    turns: list[Any] = [
        ask,
        {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],  # type: ignore[union-attr]
        },
    ]
    answer = await client.messages.create(
        model="native", max_tokens=50, tools=TOOLS, messages=turns
    )
    assert [b.model_dump(exclude_none=True) for b in answer.content] == [
        {"type": "text", "text": "The tool said: sunny"}
    ]
    assert fresh.claude.requests[-1].json == {
        "model": CLAUDE,
        "max_tokens": 50,
        "messages": turns,
        "tools": TOOLS,
    }
    assert fresh.claude.invalid == []
    records = await fresh.new_records()
    assert [(r["operation"], r["endpoint"], r["status"]) for r in records] == [
        ("messages", "claude", 200)
    ] * 2


async def test_count_tokens_native_and_estimated(fresh: Stack) -> None:
    client = fresh.sdk()
    words = [{"role": "user", "content": "count these four words"}]
    counted = await client.messages.count_tokens(model="native", messages=words)  # type: ignore[arg-type]
    assert counted == MessageTokensCount(input_tokens=4)
    (received,) = fresh.claude.requests
    assert (received.path, received.json) == (
        "/v1/messages/count_tokens",
        {"model": CLAUDE, "messages": words},
    )
    assert_native_headers(fresh, received, **{"anthropic-version": SDK_VERSION})

    raw = await client.messages.with_raw_response.count_tokens(model="translated", messages=words)  # type: ignore[arg-type]
    estimate = {"input_tokens": 12, "estimated": True}
    assert CountTokensFront.estimate({"model": "translated", "messages": words}) == estimate
    assert json.loads(await raw.read()) == estimate
    assert (await raw.parse()).input_tokens == 12
    assert fresh.vllm.requests == []  # an estimate: nothing went upstream
    records = await fresh.new_records()
    assert [(r["operation"], r["status"]) for r in records] == [("messages", 200)] * 2
    assert records[0]["endpoint"] == "claude"


# ---------------------------------------------------------------------------
# Translated: the fake vLLM gets Chat Completions.


async def test_translated_create(fresh: Stack) -> None:
    fresh.vllm.next(reply="Bonjour from llama")
    message = await fresh.sdk().messages.create(
        model="translated",
        max_tokens=64,
        system="Be brief.",
        messages=HI,
        stop_sequences=["END"],
    )
    assert message.model_dump(exclude_none=True, exclude={"id"}) == {
        "type": "message",
        "role": "assistant",
        "model": LLAMA,
        "content": [{"type": "text", "text": "Bonjour from llama"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 4,
            "output_tokens": 3,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    assert message.id.startswith("msg_")
    (received,) = fresh.vllm.requests
    assert received.path == "/v1/chat/completions"
    assert received.headers["Authorization"] == f"Bearer {VLLM_TOKEN}"
    assert received.json == {
        "model": LLAMA,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
        ],
        "max_tokens": 64,
        "stop": ["END"],
        "stream": False,
    }
    (record,) = await fresh.new_records()
    assert (record["operation"], record["endpoint"], record["status"], record["tokens"]) == (
        "messages",
        "vllm",
        200,
        {"input": 4, "output": 3},
    )


async def test_translated_stream(fresh: Stack) -> None:
    fresh.vllm.next(reply="one two three four")
    async with fresh.sdk().messages.stream(
        model="translated", max_tokens=64, messages=HI
    ) as stream:
        types = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert [t for t in types if t != "text"] == TEXT_EVENTS
    assert final.model_dump(exclude_none=True, exclude={"id"}) == {
        "type": "message",
        "role": "assistant",
        "model": LLAMA,
        "content": [{"type": "text", "text": "one two three four"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 2,
            "output_tokens": 4,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    (received,) = fresh.vllm.requests
    assert received.json == {
        "model": LLAMA,
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 64,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    (record,) = await fresh.new_records()
    assert (record["operation"], record["endpoint"], record["tokens"]) == (
        "messages",
        "vllm",
        {"input": 2, "output": 4},
    )


async def test_translated_tool_result_turn(fresh: Stack) -> None:
    fresh.vllm.next(reply="It is sunny in Paris")
    turns: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}],
        },
    ]
    answer = await fresh.sdk().messages.create(
        model="translated", max_tokens=50, tools=TOOLS, messages=turns
    )
    assert [b.model_dump(exclude_none=True) for b in answer.content] == [
        {"type": "text", "text": "It is sunny in Paris"}
    ]
    (received,) = fresh.vllm.requests
    assert received.json == {
        "model": LLAMA,
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        ],
        "max_tokens": 50,
        "stream": False,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather of a city",
                    "parameters": TOOLS[0]["input_schema"],
                },
            }
        ],
    }


async def test_system_turns_in_messages_native_and_translated(fresh: Stack) -> None:
    # The SDK's MessageParam takes `system` turns; the gateway must not refuse them.
    turns: list[Any] = [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi."},
        {"role": "system", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "Bye"},
    ]
    native = await fresh.sdk().messages.create(model="native", max_tokens=16, messages=turns)
    assert native.content[0].text == "You said: Bye"  # type: ignore[union-attr]
    (received,) = fresh.claude.requests
    assert received.json == {"model": CLAUDE, "max_tokens": 16, "messages": turns}
    assert fresh.claude.invalid == []

    fresh.vllm.next(reply="Au revoir")
    translated = await fresh.sdk().messages.create(
        model="translated", max_tokens=16, messages=turns
    )
    assert translated.content[0].text == "Au revoir"  # type: ignore[union-attr]
    assert fresh.vllm.requests[-1].json["messages"] == [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi."},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Bye"},
    ]


# ---------------------------------------------------------------------------
# Credentials, errors, failover.


async def test_credentials_in_x_api_key_or_bearer(fresh: Stack) -> None:
    # The 2.x SDK sends `api_key` and `auth_token` as `Authorization: Bearer`;
    # Claude Code and the 1.x SDKs send ANTHROPIC_API_KEY as `x-api-key`.
    clients = [
        fresh.sdk(api_key=fresh.key),
        fresh.sdk(api_key=None, auth_token=fresh.key),
        fresh.sdk(api_key=None, default_headers={"x-api-key": fresh.key}),
    ]
    answers = [
        await client.messages.create(model="native", max_tokens=8, messages=HI)
        for client in clients
    ]
    assert [a.content[0].text for a in answers] == ["You said: Hello there"] * 3  # type: ignore[union-attr]
    assert len(fresh.claude.requests) == 3
    for received in fresh.claude.requests:
        assert_native_headers(fresh, received)
    records = await fresh.new_records()
    assert [(r["tenant"], r["user"], r["status"]) for r in records] == [("acme", "u-1", 200)] * 3

    for client in (
        fresh.sdk(api_key="kw_not-a-key"),
        fresh.sdk(api_key=None, auth_token="nope"),
        fresh.sdk(api_key=None, default_headers={"x-api-key": "kw_unknown"}),
    ):
        with pytest.raises(anthropic.AuthenticationError) as info:
            await client.messages.create(model="native", max_tokens=8, messages=HI)
        assert info.value.status_code == 401
        body = info.value.body
        assert isinstance(body, dict) and set(body) == {"type", "error"}
        assert (body["type"], body["error"]["type"]) == ("error", "authentication_error")
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert len(fresh.claude.requests) == 3  # nothing forwarded without a credential
    records = await fresh.new_records()
    assert [(r["operation"], r["status"]) for r in records] == [("messages", 401)] * 3


async def test_bad_bodies_and_policy_refusals_raise_the_sdks_classes(fresh: Stack) -> None:
    client = fresh.sdk()
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model="native", max_tokens=0, messages=HI)
    assert bad.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "max_tokens: field required (an integer of at least 1)",
        },
    }
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(
            model="native",
            max_tokens=5,
            messages=[{"role": "user", "content": 3}],  # type: ignore[misc, list-item]
        )
    assert bad.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages.0.content: must be a string or a list of content blocks",
        },
    }

    # pii-restricted data may only reach in-VPC endpoints: the guard refuses Claude.
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        await client.messages.create(
            model="native",
            max_tokens=5,
            messages=HI,
            extra_headers={"X-Data-Class": "pii-restricted"},
        )
    assert denied.value.status_code == 403
    body = denied.value.body
    assert isinstance(body, dict) and set(body) == {"type", "error"}
    assert body["type"] == "error" and body["error"]["type"] == "permission_error"
    assert "guard in-vpc" in body["error"]["message"]
    assert fresh.claude.requests == [] and fresh.vllm.requests == []
    records = await fresh.new_records()
    assert [(r["operation"], r["status"]) for r in records][-1] == ("messages", 403)


@pytest.mark.parametrize(
    ("failure", "error_class", "status", "error_type"),
    [
        (
            Failure(429, "rate_limit_error", "slow down"),
            anthropic.RateLimitError,
            429,
            "rate_limit_error",
        ),
        (Failure(500, "api_error", "boom"), anthropic.InternalServerError, 502, "api_error"),
    ],
)
async def test_upstream_failures_raise_the_sdks_classes(
    fresh: Stack,
    failure: Failure,
    error_class: type[anthropic.APIStatusError],
    status: int,
    error_type: str,
) -> None:
    fresh.claude.fail(failure)
    with pytest.raises(error_class) as info:
        await fresh.sdk().messages.create(model="native", max_tokens=5, messages=HI)
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict) and set(body) == {"type", "error"}
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == error_type
    assert ANTHROPIC_KEY not in json.dumps(body)
    (record,) = await fresh.new_records()
    assert (record["operation"], record["endpoint"], record["status"]) == (
        "messages",
        "claude",
        status,
    )


async def test_failover_from_native_to_translated(fresh: Stack) -> None:
    fresh.claude.fail(Failure(529, "overloaded_error", "Overloaded"))
    fresh.vllm.next(reply="served by llama")
    raw = await fresh.sdk().messages.with_raw_response.create(
        model="native-then-translated", max_tokens=16, messages=HI
    )
    assert raw.headers["X-Kamiwaza-Endpoint"] == "vllm"
    assert [b.model_dump() for b in (await raw.parse()).content] == [
        {"type": "text", "text": "served by llama", "citations": None}
    ]
    assert len(fresh.claude.requests) == 1 and len(fresh.vllm.requests) == 1

    fresh.claude.fail(Failure(529, "overloaded_error", "Overloaded"))
    async with fresh.sdk().messages.stream(
        model="native-then-translated", max_tokens=16, messages=HI
    ) as stream:
        assert (
            await stream.get_final_text() == "Hello from the fake upstream, streamed word by word."
        )
    records = await fresh.new_records()
    assert len(records) == 2
    for record in records:
        assert (record["operation"], record["endpoint"], record["status"]) == (
            "messages",
            "vllm",
            200,
        )
        assert [a["endpoint"] for a in record["attempts"]] == ["claude", "vllm"]


async def test_a_stream_that_fails_after_message_start(fresh: Stack) -> None:
    # Overloaded right after message_start: nothing of the answer has gone out,
    # so the gateway fails over to the translated endpoint.
    fresh.claude.fail(Failure(529, "overloaded_error", "Overloaded", in_stream=True))
    async with fresh.sdk().messages.stream(
        model="native-then-translated", max_tokens=16, messages=HI
    ) as stream:
        text = await stream.get_final_text()
    assert text == "Hello from the fake upstream, streamed word by word."
    (record,) = await fresh.new_records()
    assert [a["endpoint"] for a in record["attempts"]] == ["claude", "vllm"]
    assert (record["endpoint"], record["status"]) == ("vllm", 200)

    # Without a fallback the SDK raises the overload as its own error.
    fresh.claude.fail(Failure(529, "overloaded_error", "Overloaded", in_stream=True))
    with pytest.raises(anthropic.ServiceUnavailableError) as info:
        async with fresh.sdk().messages.stream(model="native", max_tokens=16, messages=HI) as s:
            await s.get_final_text()
    assert info.value.status_code == 503
    body = info.value.body
    assert isinstance(body, dict) and set(body) == {"type", "error"}
    assert (body["type"], set(body["error"]), body["error"]["type"]) == (
        "error",
        {"type", "message"},
        "overloaded_error",
    )
    assert "Overloaded" in body["error"]["message"]
    (record,) = await fresh.new_records()
    assert (record["operation"], record["endpoint"]) == ("messages", "claude")
    assert record["status"] == 503


async def test_beta_messages_with_betas(fresh: Stack) -> None:
    # client.beta.messages sends `?beta=true` and the betas as `anthropic-beta`.
    client = fresh.sdk()
    message = await client.beta.messages.create(
        model="native",
        max_tokens=16,
        messages=HI,
        betas=["context-management-2025-06-27", "files-api-2025-04-14"],
    )
    assert message.content[0].text == "You said: Hello there"  # type: ignore[union-attr]
    (received,) = fresh.claude.requests
    assert received.json == {"model": CLAUDE, "max_tokens": 16, "messages": HI}
    assert received.headers["anthropic-beta"] == (
        "context-management-2025-06-27,files-api-2025-04-14"
    )
    async with client.beta.messages.stream(
        model="translated", max_tokens=16, messages=HI, betas=["files-api-2025-04-14"]
    ) as stream:
        assert (await stream.get_final_text()).startswith("Hello from the fake upstream")
    records = await fresh.new_records()
    assert [(r["endpoint"], r["status"]) for r in records] == [("claude", 200), ("vllm", 200)]


async def test_beta_count_tokens_and_metadata_in_the_body(fresh: Stack) -> None:
    client = fresh.sdk()
    counted = await client.beta.messages.count_tokens(
        model="native", messages=HI, betas=["token-counting-2024-11-01"]
    )
    assert counted.input_tokens == 2
    (received,) = fresh.claude.requests
    assert (received.path, received.json) == (
        "/v1/messages/count_tokens",
        {"model": CLAUDE, "messages": HI},
    )
    # What the SDK sends straight to Anthropic arrives unchanged (this SDK
    # repeats the token-counting beta it adds itself).
    async with anthropic.AsyncAnthropic(
        api_key=ANTHROPIC_KEY, base_url=fresh.claude.url, max_retries=0
    ) as direct:
        await direct.beta.messages.count_tokens(
            model=CLAUDE, messages=HI, betas=["token-counting-2024-11-01"]
        )
    assert received.headers.getall("anthropic-beta") == fresh.claude.requests[-1].headers.getall(
        "anthropic-beta"
    )
    fresh.claude.requests.pop()

    # Gateway metadata in a `kamiwaza` object is read, and never forwarded.
    with pytest.raises(anthropic.PermissionDeniedError):
        await client.messages.create(
            model="native",
            max_tokens=8,
            messages=HI,
            extra_body={"kamiwaza": {"data_class": "pii-restricted"}},
        )
    await client.messages.create(
        model="native",
        max_tokens=8,
        messages=HI,
        extra_body={"kamiwaza": {"labels": {"team": "a"}}},
    )
    assert len(fresh.claude.requests) == 2
    assert fresh.claude.requests[-1].json == {"model": CLAUDE, "max_tokens": 8, "messages": HI}
    records = await fresh.new_records()
    assert [(r["endpoint"], r["status"]) for r in records] == [
        ("claude", 200),
        (None, 403),
        ("claude", 200),
    ]
    assert records[2]["labels"] == {"team": "a"}


async def test_translated_image(fresh: Stack) -> None:
    fresh.vllm.next(reply="A pixel")
    content: list[Any] = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": cc.PNG}},
        {"type": "text", "text": "what is this"},
    ]
    answer = await fresh.sdk().messages.create(
        model="translated", max_tokens=16, messages=[{"role": "user", "content": content}]
    )
    assert answer.content[0].text == "A pixel"  # type: ignore[union-attr]
    assert fresh.vllm.requests[-1].json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{cc.PNG}"}},
                {"type": "text", "text": "what is this"},
            ],
        }
    ]


# ---------------------------------------------------------------------------
# A Claude-Code-shaped session, byte for byte.


async def test_a_claude_code_session_reaches_anthropic_byte_identical(fresh: Stack) -> None:
    fresh.claude.responder.cache_read, fresh.claude.responder.cache_write = 900, 120
    messages = cc.first_turns()
    async with aiohttp.ClientSession() as http:
        for turn in range(3):
            raw = cc.wire(cc.body(messages))
            async with http.post(
                fresh.gateway.url("/v1/messages"),
                data=raw,
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {fresh.key}",
                    "User-Agent": "claude-cli/2.0.0 (external, cli)",
                    **cc.HEADERS,
                },
            ) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                events = sse_events(await resp.read())
            sent = fresh.claude.requests[-1]
            assert sent.raw == raw.replace(
                f'"model":"{cc.CLIENT_MODEL}"'.encode(), f'"model":"{CLAUDE}"'.encode()
            )
            assert_native_headers(fresh, sent, **cc.HEADERS)
            names = [name for name, _ in events]
            assert (names[0], names[-2:]) == ("message_start", ["message_delta", "message_stop"])
            text = "".join(e["delta"]["text"] for n, e in events if n == "content_block_delta")
            messages = [
                *messages,
                {"role": "assistant", "content": [{"type": "text", "text": text}]},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_01B",
                            "content": f"turn {turn}",
                        }
                    ],
                },
            ]
    assert fresh.claude.invalid == [] and len(fresh.claude.requests) == 3
    records = await fresh.new_records()
    assert [(r["operation"], r["endpoint"], r["status"]) for r in records] == [
        ("messages", "claude", 200)
    ] * 3
    for record in records:
        assert record["tokens"]["input"] > 1000  # cache reads and writes count as input


async def test_a_claude_code_turn_translated_to_vllm(fresh: Stack) -> None:
    fresh.vllm.next(reply="I will edit the test.")
    body = cc.body(cc.first_turns())
    body["model"] = "translated"
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            fresh.gateway.url("/v1/messages"),
            data=cc.wire(body),
            headers={"Content-Type": "application/json", "x-api-key": fresh.key, **cc.HEADERS},
        ) as resp,
    ):
        assert resp.status == 200
        events = sse_events(await resp.read())
    text = "".join(e["delta"].get("text", "") for n, e in events if n == "content_block_delta")
    assert (events[0][0], events[-1][0], text) == (
        "message_start",
        "message_stop",
        "I will edit the test.",
    )
    sent = fresh.vllm.requests[-1].json
    system = sent["messages"][0]
    assert system["role"] == "system"
    assert system["content"] == "\n\n".join(b["text"] for b in body["system"])
    assert sent["messages"][1:] == [
        {
            "role": "user",
            "content": "<system-reminder>\nAs you answer, use the tools.\n</system-reminder>"
            "\n\nFix the failing test in tests/test_x.py",
        },
        {
            "role": "assistant",
            "content": "I'll run the tests first.",
            "tool_calls": [
                {
                    "id": "toolu_01A",
                    "type": "function",
                    "function": {
                        "name": "Bash",
                        "arguments": '{"command":"pytest -q tests/test_x.py","timeout":120000.5}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01A", "content": "F\n1 failed in 0.12s"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_01B",
                    "type": "function",
                    "function": {
                        "name": "Read",
                        "arguments": '{"file_path":"/repo/tests/test_x.py"}',
                    },
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "toolu_01B",
            "content": "     1\tdef test_x():\n     2\t    assert 1 + 1 == 3\n",
        },
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{cc.PNG}"}},
                {"type": "text", "text": "Here is a screenshot of the failure."},
            ],
        },
    ]
    assert [t["function"]["name"] for t in sent["tools"]] == ["Bash", "Read", "Edit"]
    assert {k: v for k, v in sent.items() if k not in ("messages", "tools")} == {
        "model": LLAMA,
        "max_tokens": 32000,
        "temperature": 1,
        "user": body["metadata"]["user_id"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    (record,) = await fresh.new_records()
    assert (record["endpoint"], record["status"], record["notes"]) == (
        "vllm",
        200,
        [
            "cache_control: dropped (prompt caching is Anthropic's)",
            "thinking blocks: dropped (Chat Completions takes no earlier reasoning)",
            "tool_result.is_error: sent as a plain tool result",
            "thinking: dropped (this endpoint takes no reasoning settings)",
        ],
    )


async def test_edge_errors_in_anthropics_shape(fresh: Stack) -> None:
    big: list[Any] = [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]
    with pytest.raises(anthropic.ContentTooLargeError) as large:
        await fresh.sdk().messages.create(model="native", max_tokens=5, messages=big)
    assert large.value.body == {
        "type": "error",
        "error": {
            "type": "request_too_large",
            "message": "request body too large (limit 4194304 bytes)",
        },
    }
    # Paths under /v1/messages that the gateway does not serve (batches) answer
    # in Anthropic's shape too, so the SDK raises its NotFoundError.
    with pytest.raises(anthropic.NotFoundError) as missing:
        await fresh.sdk().messages.batches.list()
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "no such route"},
    }
    async with aiohttp.ClientSession() as http:
        headers = {"x-api-key": fresh.key, "Content-Type": "application/json"}
        async with http.post(
            fresh.gateway.url("/v1/messages"), data=b"{not json", headers=headers
        ) as resp:
            assert resp.status == 400
            body = await resp.json()
            assert (body["type"], body["error"]["type"]) == ("error", "invalid_request_error")
            assert body["error"]["message"].startswith("request body is not valid JSON")
        async with http.get(fresh.gateway.url("/v1/messages"), headers=headers) as resp:
            assert (resp.status, await resp.json()) == (
                405,
                {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "Method Not Allowed"},
                },
            )
    assert fresh.claude.requests == []
    records = await fresh.new_records()
    assert [(r["operation"], r["status"]) for r in records] == [
        ("messages", 413),
        ("messages", 400),
    ]

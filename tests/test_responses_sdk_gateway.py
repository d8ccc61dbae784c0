"""The Responses front through a running gateway, driven by the official
`openai` SDK: a real OPA sidecar, a fake OpenAI endpoint that serves
`/v1/responses` (passed through), a chat-only vLLM fake and the fake Anthropic
API (both translated); errors as the SDK's exceptions; a policy that routes by
`operation`; and `/v1/models`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
import pytest_asyncio
from openai.types.responses import Response
from pydantic import BaseModel

from gateway.auth import KeyStore
from tests.claude_code_body import PNG
from tests.fake_anthropic import FakeAnthropic
from tests.fake_responses import ResponsesFailure
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import Gateway, serve_gateway

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

OPENAI_KEY = "sk-openai-canary-responses-41"
VLLM_TOKEN = "vllm-canary-responses-42"
ANTHROPIC_KEY = "sk-ant-canary-responses-43"
GPT = "gpt-5-2025-08-07"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
CLAUDE = "claude-sonnet-4-5"
# Model names pick the translated endpoints; otherwise the operation decides.
POLICY = """\
version: v1
rules:
  - name: to-vllm
    match: {model: to-vllm}
    route_to: vllm
  - name: to-claude
    match: {model: to-claude}
    route_to: claude
  - name: openai-then-vllm
    match: {model: openai-then-vllm}
    route_to: openai
    fallback: [vllm]
  - name: messages
    match: {operation: messages}
    route_to: claude
  - name: responses
    match: {operation: responses}
    route_to: openai
  - default:
      route_to: vllm
"""
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": False,
    }
]
STREAM_TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]


@dataclass
class Stack:
    gateway: Gateway
    saas: FakeUpstream
    vllm: FakeUpstream
    claude: FakeAnthropic
    key: str
    seen: int = 0

    def sdk(self, key: str | None = None) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            base_url=self.gateway.base_url, api_key=key or self.key, max_retries=0
        )
        self.gateway.clients.append(client)
        return client

    async def new_records(self) -> list[dict[str, Any]]:
        records = await self.gateway.audit_records()
        fresh, self.seen = records[self.seen :], len(records)
        return fresh


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(opa_bin: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    work = tmp_path_factory.mktemp("responses-sdk")
    saas = await FakeUpstream(token=OPENAI_KEY, model=GPT).start()
    vllm = await FakeUpstream(token=VLLM_TOKEN, model=LLAMA).start()
    claude = await FakeAnthropic(api_key=ANTHROPIC_KEY).start()
    timeouts = "    timeouts: {connect_ms: 1000, first_token_ms: 5000, total_ms: 10000}"
    (work / "routing.yaml").write_text(POLICY)
    (work / "endpoints.yaml").write_text(
        "\n".join(
            [
                "endpoints:",
                "  openai:",
                "    type: openai",
                f"    base_url: {saas.url}",
                f"    model: {GPT}",
                "    auth: {api_key_env: OPENAI_API_KEY}",
                "    pricing: {input_per_1k: 1.25, output_per_1k: 10.0}",
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
                "  claude:",
                "    type: anthropic",
                f"    base_url: {claude.url}",
                f"    model: {CLAUDE}",
                "    auth: {api_key_env: ANTHROPIC_API_KEY}",
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
        environ={
            "OPENAI_API_KEY": OPENAI_KEY,
            "VLLM_TOKEN": VLLM_TOKEN,
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        },
        overrides={"breaker_failures": 1000, "opa_timeout_ms": 2000},
    )
    try:
        yield Stack(gateway, saas, vllm, claude, key)
    finally:
        await gateway.close()
        await saas.close()
        await vllm.close()
        await claude.close()


@pytest_asyncio.fixture(loop_scope="module")
async def fresh(stack: Stack) -> Stack:
    for fake in (stack.saas, stack.vllm):
        fake.requests.clear()
        fake.queue.clear()
        fake.responses.queue.clear()
        fake.responses.invalid.clear()
    stack.claude.reset()
    await stack.new_records()
    return stack


# ---------------------------------------------------------------------------
# Passed through to OpenAI.


async def test_passthrough_create(fresh: Stack) -> None:
    sent: dict[str, Any] = {
        "model": "gpt-5",
        "instructions": "Be brief.",
        "input": "hello there",
        "max_output_tokens": 50,
        "metadata": {"ticket": "T-1"},
    }
    raw = await fresh.sdk().responses.with_raw_response.create(**sent)
    answer = raw.parse()
    assert raw.headers["X-Kamiwaza-Endpoint"] == "openai"
    assert (answer.output_text, answer.model, answer.status) == (
        "You said: hello there",
        GPT,
        "completed",
    )
    # The SDK's response is the upstream's, whole.
    stored = Response.model_validate(fresh.saas.responses.stored[answer.id])
    assert answer.model_dump(exclude_none=True) == stored.model_dump(exclude_none=True)
    (received,) = fresh.saas.requests
    assert (received.path, received.json) == ("/v1/responses", {**sent, "model": GPT})
    assert received.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert fresh.key not in json.dumps(dict(received.headers))
    assert fresh.saas.responses.invalid == []
    (record,) = await fresh.new_records()
    assert (record["operation"], record["endpoint"], record["rule"]["name"], record["status"]) == (
        "responses",
        "openai",
        "responses",
        200,
    )
    usage = answer.usage
    assert usage is not None
    assert record["tokens"] == {"input": usage.input_tokens, "output": usage.output_tokens}


async def test_passthrough_stream_and_function_round_trip(fresh: Stack) -> None:
    client = fresh.sdk()
    async with client.responses.stream(
        model="gpt-5", input='get_weather {"city": "Oslo"}', tools=TOOLS
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    stored = Response.model_validate(fresh.saas.responses.stored[final.id])
    assert final.model_dump(exclude_none=True) == stored.model_dump(exclude_none=True)
    call = final.output[0]
    assert call.type == "function_call"
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    # OpenAI holds the state: previous_response_id passes through to it.
    follow = await client.responses.create(
        model="gpt-5",
        previous_response_id=final.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rainy"}],
        tools=TOOLS,
    )
    assert follow.output_text == "The tool said: rainy"
    assert fresh.saas.requests[-1].json["previous_response_id"] == final.id
    assert fresh.saas.responses.invalid == []
    records = await fresh.new_records()
    assert [(r["operation"], r["endpoint"], r["status"]) for r in records] == [
        ("responses", "openai", 200)
    ] * 2


# ---------------------------------------------------------------------------
# Translated to a chat-only vLLM and to Anthropic's Messages API.


async def test_translated_to_vllm_create_and_stream(fresh: Stack) -> None:
    fresh.vllm.next(reply="Bonjour from llama")
    client = fresh.sdk()
    answer = await client.responses.create(
        model="to-vllm", instructions="Be brief.", input="hello there", max_output_tokens=40
    )
    # Never stored: the gateway keeps no conversation state.
    assert (answer.output_text, answer.model, answer.status, answer.to_dict()["store"]) == (
        "Bonjour from llama",
        LLAMA,
        "completed",
        False,
    )
    assert answer.usage is not None
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (4, 3)
    (received,) = fresh.vllm.requests
    assert received.path == "/v1/chat/completions"
    assert received.headers["Authorization"] == f"Bearer {VLLM_TOKEN}"
    assert received.json == {
        "model": LLAMA,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there"},
        ],
        "max_tokens": 40,
        "stream": False,
    }

    fresh.vllm.next(reply="one two three")
    async with client.responses.stream(model="to-vllm", input="count") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds == [
        *STREAM_TEXT_EVENTS,
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert (final.output_text, final.status) == ("one two three", "completed")
    assert fresh.vllm.requests[-1].json == {
        "model": LLAMA,
        "messages": [{"role": "user", "content": "count"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert fresh.saas.requests == []
    records = await fresh.new_records()
    assert [(r["operation"], r["endpoint"], r["status"]) for r in records] == [
        ("responses", "vllm", 200)
    ] * 2
    assert records[1]["tokens"] == {"input": 1, "output": 3}


async def test_translated_items_image_and_dropped_reasoning(fresh: Stack) -> None:
    fresh.vllm.next(reply="A pixel")
    png = PNG
    answer = await fresh.sdk().responses.create(
        model="to-vllm",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this"},
                    {
                        "type": "input_image",
                        "image_url": f"data:image/png;base64,{png}",
                        "detail": "auto",
                    },
                ],
            }
        ],
        reasoning={"effort": "high"},
    )
    assert answer.output_text == "A pixel"
    assert fresh.vllm.requests[-1].json == {
        "model": LLAMA,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:image/png;base64,{png}", "detail": "auto"},
                    },
                ],
            }
        ],
        "stream": False,
    }
    (record,) = await fresh.new_records()
    assert (record["operation"], record["endpoint"], record["notes"]) == (
        "responses",
        "vllm",
        ["reasoning.effort: dropped (this endpoint takes no reasoning settings)"],
    )


async def test_translated_to_anthropic_function_round_trip_and_structured_output(
    fresh: Stack,
) -> None:
    client = fresh.sdk()
    first = await client.responses.create(
        model="to-claude", input='Use get_weather {"city": "Paris"}', tools=TOOLS
    )
    (call,) = first.output
    assert call.type == "function_call"
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert fresh.claude.requests[-1].json == {
        "model": CLAUDE,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": 'Use get_weather {"city": "Paris"}'}],
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather of a city",
                "input_schema": TOOLS[0]["parameters"],
            }
        ],
    }
    follow = await client.responses.create(
        model="to-claude",
        input=[
            {"role": "user", "content": 'Use get_weather {"city": "Paris"}'},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=TOOLS,
    )
    assert follow.output_text == "The tool said: sunny"

    class Answer(BaseModel):
        city: str

    parsed = await client.responses.parse(model="to-claude", input="Paris", text_format=Answer)
    assert parsed.output_parsed == Answer(city="Paris")
    assert fresh.claude.requests[-1].json == {
        "model": CLAUDE,
        "max_tokens": 4096,  # Anthropic needs one: the endpoint's default
        "messages": [{"role": "user", "content": "Paris"}],
        "output_config": {
            "format": {
                "type": "json_schema",
                "schema": Answer.model_json_schema() | {"additionalProperties": False},
            }
        },
    }
    assert fresh.claude.invalid == []
    records = await fresh.new_records()
    assert [(r["operation"], r["endpoint"], r["status"]) for r in records] == [
        ("responses", "claude", 200)
    ] * 3


# ---------------------------------------------------------------------------
# Errors and routing by operation.


async def test_errors_raise_the_sdks_exceptions(fresh: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as who:
        await fresh.sdk("kw_not-a-key").responses.create(model="gpt-5", input="hi")
    assert who.value.status_code == 401

    with pytest.raises(openai.BadRequestError) as bad:
        await fresh.sdk().responses.create(model="gpt-5", input="hi", max_output_tokens=0)
    assert bad.value.body == {
        "message": "'max_output_tokens' must be a positive integer",
        "type": "invalid_request_error",
        "code": "invalid_body",
    }

    # No conversation state off OpenAI: a clear 400 before anything is forwarded.
    with pytest.raises(openai.BadRequestError) as stateful:
        await fresh.sdk().responses.create(
            model="to-vllm", previous_response_id="resp_1", input="and then?"
        )
    assert "previous_response_id" in stateful.value.message
    assert fresh.vllm.requests == []

    fresh.saas.responses.queue.append(ResponsesFailure(500, "boom"))
    with pytest.raises(openai.InternalServerError) as failed:
        await fresh.sdk().responses.create(model="gpt-5", input="hi")
    assert failed.value.status_code == 502
    assert OPENAI_KEY not in json.dumps(failed.value.body)
    records = await fresh.new_records()
    assert [(r["operation"], r["status"]) for r in records] == [
        ("responses", 401),
        ("responses", 400),
        ("responses", 400),
        ("responses", 502),
    ]


async def test_failover_and_stream_failures(fresh: Stack) -> None:
    client = fresh.sdk()
    fresh.saas.responses.queue.append(ResponsesFailure(503, "busy"))
    fresh.vllm.next(reply="served by llama")
    raw = await client.responses.with_raw_response.create(model="openai-then-vllm", input="hi")
    assert raw.headers["X-Kamiwaza-Endpoint"] == "vllm"
    assert raw.parse().output_text == "served by llama"
    (record,) = await fresh.new_records()
    assert [a["endpoint"] for a in record["attempts"]] == ["openai", "vllm"]

    # Failed right after response.created: nothing went out yet, so it fails over.
    fresh.saas.responses.queue.append(ResponsesFailure(500, "boom", in_stream=True))
    async with client.responses.stream(model="openai-then-vllm", input="hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == "Hello from the fake upstream, streamed word by word."
    (record,) = await fresh.new_records()
    assert [a["endpoint"] for a in record["attempts"]] == ["openai", "vllm"]

    # A translated stream cut by an upstream error after text went out ends with
    # response.failed (the delay puts the text and the error in separate reads).
    fresh.vllm.next(stream_error_after_chunks=2, chunk_delay=0.02)
    async with client.responses.stream(model="to-vllm", input="hi") as stream:
        events = [event async for event in stream]
    assert [e.type for e in events] == [
        *STREAM_TEXT_EVENTS,
        "response.output_text.delta",
        "response.output_text.delta",
        "response.failed",
    ]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None
    assert "fake upstream overloaded" in failed.error.message
    (record,) = await fresh.new_records()
    assert (record["endpoint"], record["status"], record["error"]["code"]) == (
        "vllm",
        200,
        "overloaded",
    )


async def test_the_policy_routes_by_operation(fresh: Stack) -> None:
    sdk = fresh.sdk()
    chat = await sdk.chat.completions.with_raw_response.create(
        model="anything", messages=[{"role": "user", "content": "hi"}]
    )
    responses = await sdk.responses.with_raw_response.create(model="anything", input="hi")
    async with anthropic.AsyncAnthropic(
        base_url=fresh.gateway.url(""), api_key=fresh.key, max_retries=0
    ) as claude:
        messages = await claude.messages.with_raw_response.create(
            model="anything", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert [
        (r.headers["X-Kamiwaza-Endpoint"], r.headers["X-Kamiwaza-Rule"])
        for r in (chat, responses, messages)
    ] == [("vllm", "default"), ("openai", "responses"), ("claude", "messages")]
    assert [len(fresh.vllm.requests), len(fresh.saas.requests), len(fresh.claude.requests)] == [
        1,
        1,
        1,
    ]
    records = await fresh.new_records()
    assert [(r["operation"], r["endpoint"], r["rule"]["name"]) for r in records] == [
        ("chat", "vllm", "default"),
        ("responses", "openai", "responses"),
        ("messages", "claude", "messages"),
    ]


async def test_models_answers(fresh: Stack) -> None:
    models = await fresh.sdk().models.list()
    listed = {m.id: m.model_dump() for m in models.data}
    assert set(listed) == {GPT, LLAMA, CLAUDE}
    for model_id, owner in ((GPT, "openai"), (LLAMA, "openai-compatible"), (CLAUDE, "anthropic")):
        assert listed[model_id]["owned_by"] == owner
        assert listed[model_id]["operations"] == ["chat", "messages", "responses"]
    with pytest.raises(openai.AuthenticationError):
        await fresh.sdk("kw_nope").models.list()


async def test_stored_state_never_fails_over_to_a_translated_endpoint(fresh: Stack) -> None:
    client = fresh.sdk()
    first = await client.responses.create(model="gpt-5", input="remember me")
    fresh.saas.responses.queue.append(ResponsesFailure(503, "busy"))
    # OpenAI's outage is the answer (a 5xx the SDK may retry), not a 400 that
    # blames the client for the fallback's lack of state.
    with pytest.raises(openai.InternalServerError) as info:
        await client.responses.create(
            model="openai-then-vllm", previous_response_id=first.id, input="and?"
        )
    assert info.value.status_code == 502
    assert info.value.message == (
        "Error code: 502 - busy (tried openai: upstream_unavailable; vllm: unsupported_request)"
    )
    assert fresh.vllm.requests == []  # the conversation was not silently cut short
    records = await fresh.new_records()
    assert records[-1]["status"] == 502
    assert [(a["endpoint"], a["status"], a["error"]) for a in records[-1]["attempts"]] == [
        ("openai", 503, "upstream_unavailable"),
        ("vllm", None, "unsupported_request"),
    ]


CODEX_TOOL: Any = {
    "type": "function",
    "name": "shell",
    "description": "run",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"command": {"type": "array", "items": {"type": "string"}}},
        "required": ["command"],
    },
}


@pytest.mark.parametrize("route", ["to-vllm", "to-claude"])
async def test_a_codex_shaped_stream_translated(fresh: Stack, route: str) -> None:
    stream = await fresh.sdk().responses.create(
        model=route,
        instructions="You are Codex.",
        input=[
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "<env>cwd=/repo</env>"}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "fix the test"}],
            },
        ],
        tools=[CODEX_TOOL],
        tool_choice="auto",
        parallel_tool_calls=False,
        reasoning={"effort": "medium", "summary": "auto"},
        store=False,
        stream=True,
        include=["reasoning.encrypted_content"],
        prompt_cache_key="session-123",
        text={"verbosity": "medium"},
    )
    kinds = [event.type async for event in stream]
    assert (kinds[0], kinds[-1]) == ("response.created", "response.completed")
    parameters = CODEX_TOOL["parameters"]
    if route == "to-vllm":
        assert fresh.vllm.requests[-1].json == {
            "model": LLAMA,
            "messages": [
                {"role": "system", "content": "You are Codex."},
                {"role": "system", "content": "<env>cwd=/repo</env>"},
                {"role": "user", "content": "fix the test"},
            ],
            "parallel_tool_calls": False,
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "shell", "description": "run", "parameters": parameters},
                }
            ],
            "tool_choice": "auto",
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    else:
        assert fresh.claude.requests[-1].json == {
            "model": CLAUDE,
            "max_tokens": 4096,
            "messages": [{"role": "user", "content": "fix the test"}],
            "system": "You are Codex.\n\n<env>cwd=/repo</env>",
            "tools": [{"name": "shell", "description": "run", "input_schema": parameters}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
            "stream": True,
        }
        assert fresh.claude.invalid == []
    (record,) = await fresh.new_records()
    assert (record["operation"], record["status"], record["notes"]) == (
        "responses",
        200,
        [
            "include: dropped (extra output data is not available by translation)",
            "prompt_cache_key: dropped (prompt caching is OpenAI's)",
            "text.verbosity: dropped (this endpoint takes no verbosity setting)",
            "reasoning.effort: dropped (this endpoint takes no reasoning settings)",
            "reasoning.summary: dropped (reasoning summaries are not available by translation)",
        ],
    )

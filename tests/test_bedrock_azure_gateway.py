"""Bedrock and Azure OpenAI through the gateway, with the official openai SDK as the
client: a real OPA sidecar, the fake Bedrock runtime (SigV4 recomputed with
botocore, bodies validated against botocore's Converse input shape, answers in
AWS event-stream framing), a fake STS, and a fake Azure OpenAI resource with its
Entra ID token endpoint (bodies validated with the openai package's types)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import pytest_asyncio

from gateway.providers import AttemptFailed, AttemptFailure, adapter_for
from tests.bedrock_azure_harness import (
    AWS_ACCESS_KEY,
    AWS_SECRET,
    AZURE_KEY,
    BEDROCK_MODEL,
    ENTRA_CLIENT,
    ROLE_ARN,
    Providers,
    assert_no_canary,
    start_providers,
    stop_providers,
    target,
    use_test_aws_identity,
)
from tests.fake_azure import AzureReply
from tests.fake_bedrock import Reply
from translator.errors import Position
from translator.registry import Endpoint

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(
    opa_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Providers]:
    workdir = tmp_path_factory.mktemp("bedrock-azure")
    with pytest.MonkeyPatch.context() as mp:
        use_test_aws_identity(mp, workdir)
        started = await start_providers(workdir)
        try:
            yield started
        finally:
            await stop_providers(started)


@pytest_asyncio.fixture(loop_scope="module")
async def providers(gateway: Providers) -> AsyncIterator[Providers]:
    gateway.reset()
    await gateway.new_audit_records()  # earlier tests' records
    yield gateway


# ---------------------------------------------------------------------------
# Bedrock


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Say hello to Bedrock"},
]


async def drain(stream: Any, seen: list[str], *, open_after: asyncio.Event) -> None:
    """Collect the stream's text; open the fake's gate once the client has a chunk."""
    async for chunk in stream:
        open_after.set()
        if chunk.choices:
            seen.append(chunk.choices[0].delta.content or "")


async def create(p: Providers, route: str = "bedrock", **kwargs: Any) -> Any:
    kwargs.setdefault("messages", MESSAGES)
    return await p.client().chat.completions.with_raw_response.create(
        model="gpt-4o", extra_headers=target(route), **kwargs
    )


async def test_plain_completion_system_prompt_and_multi_turn(providers: Providers) -> None:
    raw = await create(providers, max_tokens=100, temperature=0.5, stop="END")
    reply = raw.parse()
    assert raw.headers["X-Kamiwaza-Endpoint"] == "bedrock"
    assert reply.choices[0].message.content == "Hello from Bedrock."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == BEDROCK_MODEL
    assert reply.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
    }
    (received,) = providers.bedrock.requests
    assert received.path == f"/model/{BEDROCK_MODEL}/converse"
    assert received.model_id == BEDROCK_MODEL
    assert received.json == {
        "messages": [
            {"role": "user", "content": [{"text": "Hi there"}]},
            {"role": "assistant", "content": [{"text": "Hello."}]},
            {"role": "user", "content": [{"text": "Say hello to Bedrock"}]},
        ],
        "system": [{"text": "You are terse."}],
        "inferenceConfig": {"maxTokens": 100, "temperature": 0.5, "stopSequences": ["END"]},
    }
    assert received.headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS_KEY}/"
    )
    assert providers.bedrock.rejected == []
    (record,) = await providers.new_audit_records()
    assert record["endpoint"] == "bedrock"
    assert record["tokens"] == {"input": 7, "output": 3}
    assert record["cost_usd"] == pytest.approx((7 * 0.25 + 3 * 1.25) / 1000)


@pytest.mark.parametrize("split_bytes", [None, 5])
async def test_streamed_completion_with_usage(
    providers: Providers, split_bytes: int | None
) -> None:
    providers.bedrock.queue.append(Reply(text="One two three four", split_bytes=split_bytes))
    raw = await create(providers, stream=True, stream_options={"include_usage": True})
    assert raw.headers["X-Kamiwaza-Endpoint"] == "bedrock"
    chunks = [chunk async for chunk in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "One two three four"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 7,
        "completion_tokens": 4,
        "total_tokens": 11,
    }
    assert len({c.id for c in chunks}) == 1
    assert providers.bedrock.requests[0].path == f"/model/{BEDROCK_MODEL}/converse-stream"
    (record,) = await providers.new_audit_records()
    assert (record["tokens"], record["stream"]) == ({"input": 7, "output": 4}, True)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_round_trip(providers: Providers, stream: bool) -> None:
    providers.bedrock.queue.append(
        Reply(text=None, tool_calls=[("tooluse_abc", "weather", {"city": "Paris"})])
    )
    question = [{"role": "user", "content": "Weather in Paris?"}]
    raw = await create(providers, messages=question, tools=TOOLS, stream=stream)
    if stream:
        chunks = [c async for c in raw.parse()]
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
        assert calls[0].id == "tooluse_abc"
        assert calls[0].function.name == "weather"
        arguments = "".join(tc.function.arguments or "" for tc in calls)
        assert json.loads(arguments) == {"city": "Paris"}
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    else:
        reply = raw.parse()
        assert reply.choices[0].finish_reason == "tool_calls"
        assert reply.choices[0].message.content is None
        (call,) = reply.choices[0].message.tool_calls
        assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
            "tooluse_abc",
            "weather",
            {"city": "Paris"},
        )
    followup = [
        *question,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "tooluse_abc",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "tooluse_abc", "content": "Sunny, 24C"},
    ]
    providers.bedrock.queue.append(Reply(text="It is sunny."))
    second = (await create(providers, messages=followup, tools=TOOLS)).parse()
    assert second.choices[0].message.content == "It is sunny."
    sent = providers.bedrock.requests[1].json
    assert sent["messages"] == [
        {"role": "user", "content": [{"text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "toolUse": {
                        "toolUseId": "tooluse_abc",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    }
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "tooluse_abc", "content": [{"text": "Sunny, 24C"}]}}
            ],
        },
    ]
    assert sent["toolConfig"]["toolChoice"] == {"auto": {}}
    assert providers.bedrock.rejected == []


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("guardrail_intervened", "content_filter"),
    ],
)
async def test_stop_reasons_through_the_gateway(
    providers: Providers, stop_reason: str, finish: str
) -> None:
    providers.bedrock.queue.append(Reply(stop_reason=stop_reason))
    providers.bedrock.queue.append(Reply(stop_reason=stop_reason))
    assert (await create(providers)).parse().choices[0].finish_reason == finish
    chunks = [c async for c in (await create(providers, stream=True)).parse()]
    assert chunks[-1].choices[0].finish_reason == finish


GATEWAY_ERRORS = [
    (
        ("ThrottlingException", 429, "Too many requests, please wait"),
        openai.RateLimitError,
        429,
        "rate_limit_exceeded",
    ),
    (
        ("ValidationException", 400, "Input is too long for requested model."),
        openai.BadRequestError,
        400,
        "context_length_exceeded",
    ),
    (
        ("ValidationException", 400, "messages: must alternate"),
        openai.BadRequestError,
        400,
        "invalid_request",
    ),
    (
        ("AccessDeniedException", 403, "You don't have access to the model"),
        openai.InternalServerError,
        502,
        "upstream_auth_failed",
    ),
    (
        ("ServiceUnavailableException", 503, "Service unavailable"),
        openai.InternalServerError,
        503,
        "overloaded",
    ),
    (
        ("ModelNotReadyException", 429, "Model is not ready"),
        openai.InternalServerError,
        503,
        "model_not_ready",
    ),
    (
        ("ModelTimeoutException", 408, "Model timed out"),
        openai.InternalServerError,
        504,
        "model_timeout",
    ),
    (
        ("InternalServerException", 500, "Internal error"),
        openai.InternalServerError,
        502,
        "upstream_error",
    ),
]


@pytest.mark.parametrize(("error", "exc", "status", "code"), GATEWAY_ERRORS)
async def test_each_error_class(
    providers: Providers, error: tuple[str, int, str], exc: type[Exception], status: int, code: str
) -> None:
    providers.bedrock.queue.append(Reply(error=error))
    with pytest.raises(exc) as info:
        await create(providers)
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert info.value.body["code"] == code  # type: ignore[attr-defined]
    (record,) = await providers.new_audit_records()
    assert record["status"] == status
    assert [(a["endpoint"], a["status"], a["error"]) for a in record["attempts"]] == [
        ("bedrock", error[1], code)
    ]


async def test_mid_stream_exception_ends_the_stream_with_an_error_event(
    providers: Providers,
) -> None:
    providers.bedrock.queue.append(
        Reply(
            text="One two three",
            stream_exception=("modelStreamErrorException", "The model stream failed"),
            exception_after_events=3,
            gate_exception=True,
        )
    )
    stream = (await create(providers, stream=True)).parse()
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="The model stream failed"):
        await drain(stream, seen, open_after=providers.bedrock.gate)
    # What the client got before the exception stays: no failover after the first byte.
    assert "".join(seen) == "One two"
    (record,) = await providers.new_audit_records()
    assert [(a["endpoint"], a["error"]) for a in record["attempts"]] == [
        ("bedrock", "model_stream_error")
    ]


async def test_a_wrong_signature_is_rejected(providers: Providers) -> None:
    providers.bedrock.allow(AWS_ACCESS_KEY, "not-the-secret-the-gateway-has")
    with pytest.raises(openai.InternalServerError) as info:
        await create(providers)
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_auth_failed"  # type: ignore[index]
    assert providers.bedrock.rejected == ["InvalidSignatureException"]
    assert providers.bedrock.requests == []


async def test_assume_role_through_sts(providers: Providers) -> None:
    for _ in range(2):
        reply = (await create(providers, "bedrock-role")).parse()
        assert reply.choices[0].message.content == "Hello from Bedrock."
    # One AssumeRole, signed with the chain's key, serves both requests.
    assert providers.sts.calls == [
        {
            "Action": "AssumeRole",
            "Version": "2011-06-15",
            "RoleArn": ROLE_ARN,
            "RoleSessionName": "kamiwaza-bedrock-role",
            "DurationSeconds": "3600",
        }
    ]
    assert providers.sts.rejected == []
    for received in providers.bedrock.requests:
        assert "Credential=ASIAFAKE000000000001/" in received.headers["Authorization"]
        assert received.headers["X-Amz-Security-Token"] == "assumed-session-token-1"
    assert providers.bedrock.rejected == []


async def test_assume_role_refused_is_a_retryable_auth_failure(providers: Providers) -> None:
    # A fresh adapter (the gateway's has its role session cached already).
    endpoint = Endpoint(
        name="bedrock-role",
        type="bedrock",
        pos=Position("endpoints.yaml", 1, 1),
        model=BEDROCK_MODEL,
        options={
            "region": "us-east-1",
            "vpc_endpoint_url": providers.bedrock.url,
            "assume_role_arn": "arn:aws:iam::123456789012:role/not-allowed",
            "sts_endpoint_url": providers.sts.url,
        },
    )
    adapter = adapter_for(endpoint, environ={})
    try:
        with pytest.raises(AttemptFailed) as info:
            await adapter.prepare({"messages": [{"role": "user", "content": "hi"}]}, stream=False)
    finally:
        await adapter.close()
    assert info.value.failure == AttemptFailure(
        502,
        "upstream_auth_failed",
        "assuming role arn:aws:iam::123456789012:role/not-allowed failed (AccessDenied)",
        True,
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_failover_from_bedrock_to_azure(providers: Providers, stream: bool) -> None:
    if stream:
        # An exception as the stream's first event: nothing reached the client yet.
        providers.bedrock.queue.append(
            Reply(
                stream_exception=("throttlingException", "Too many requests"),
                exception_after_events=0,
            )
        )
    else:
        providers.bedrock.queue.append(
            Reply(error=("ThrottlingException", 429, "Too many requests"))
        )
    raw = await create(providers, "bedrock-then-azure", stream=stream)
    assert raw.headers["X-Kamiwaza-Endpoint"] == "azure"
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    else:
        text = raw.parse().choices[0].message.content
    assert text == "Hello from Azure."
    (record,) = await providers.new_audit_records()
    assert [(a["endpoint"], a["error"]) for a in record["attempts"]] == [
        ("bedrock", "rate_limit_exceeded"),
        ("azure", None),
    ]


async def test_aws_secrets_never_reach_outputs(
    providers: Providers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    providers.bedrock.allow(AWS_ACCESS_KEY, "wrong")
    bodies: list[Any] = []
    for route in ("bedrock", "bedrock-role"):
        try:
            await create(providers, route)
        except openai.APIStatusError as err:
            bodies.append(err.body)
    providers.bedrock.allow(AWS_ACCESS_KEY, AWS_SECRET)
    bodies.append((await create(providers, "bedrock-role")).parse().model_dump())
    bodies.append([c.model_dump() async for c in (await create(providers, stream=True)).parse()])
    assert_no_canary(caplog.text, bodies, await providers.new_audit_records())
    assert "assumed-secret-" not in caplog.text


# ---------------------------------------------------------------------------
# Azure OpenAI

AZURE_MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Say hello to Azure"},
]


async def azure(p: Providers, route: str = "azure", **kwargs: Any) -> Any:
    kwargs.setdefault("messages", AZURE_MESSAGES)
    return await create(p, route, **kwargs)


async def test_azure_plain_completion_with_api_key(providers: Providers) -> None:
    raw = await azure(providers, max_tokens=50, temperature=0.2)
    reply = raw.parse()
    assert raw.headers["X-Kamiwaza-Endpoint"] == "azure"
    assert reply.choices[0].message.content == "Hello from Azure."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "total_tokens": 13,
    }
    (received,) = providers.azure.requests
    assert received["query"] == {"api-version": "2024-10-21"}
    assert received["headers"]["api-key"] == AZURE_KEY
    assert "Authorization" not in received["headers"]
    assert received["json"] == {
        "model": "gpt-4o",
        "messages": AZURE_MESSAGES,
        "max_tokens": 50,
        "temperature": 0.2,
        "stream": False,
    }
    assert providers.azure.rejected == []
    (record,) = await providers.new_audit_records()
    assert (record["endpoint"], record["tokens"]) == ("azure", {"input": 10, "output": 3})
    assert record["cost_usd"] == pytest.approx((10 * 2.5 + 3 * 10) / 1000)


async def test_azure_streamed_completion_with_usage(providers: Providers) -> None:
    raw = await azure(providers, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from Azure."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "total_tokens": 13,
    }
    assert providers.azure.requests[0]["json"]["stream_options"] == {"include_usage": True}
    (record,) = await providers.new_audit_records()
    assert (record["stream"], record["tokens"]) == (True, {"input": 10, "output": 3})


async def test_azure_entra_token_is_fetched_once_and_sent_as_bearer(
    providers: Providers,
) -> None:
    before = providers.azure.token_requests
    for stream in (False, True):
        raw = await azure(providers, "azure-entra", stream=stream)
        assert raw.headers["X-Kamiwaza-Endpoint"] == "azure-entra"
        if stream:
            [c async for c in raw.parse()]
        else:
            assert raw.parse().choices[0].message.content == "Hello from Azure."
    # Cached: at most the first request of the module fetched a token.
    assert providers.azure.token_requests - before <= 1
    assert providers.azure.token_requests >= 1
    tokens = {r["headers"]["Authorization"] for r in providers.azure.requests}
    assert len(tokens) == 1
    (token,) = tokens
    assert token.removeprefix("Bearer ") in providers.azure.tokens
    assert all("api-key" not in r["headers"] for r in providers.azure.requests)
    assert providers.azure.rejected == []


@pytest.mark.parametrize("stream", [False, True])
async def test_azure_tool_call_round_trip(providers: Providers, stream: bool) -> None:
    providers.azure.queue.append(
        AzureReply(text=None, tool_calls=[("call_1", "weather", {"city": "Oslo"})])
    )
    question = [{"role": "user", "content": "Weather in Oslo?"}]
    raw = await azure(providers, messages=question, tools=TOOLS, stream=stream)
    if stream:
        chunks = [c async for c in raw.parse()]
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
        assert [(tc.id, tc.function.name) for tc in calls] == [("call_1", "weather")]
        assert json.loads(calls[0].function.arguments) == {"city": "Oslo"}
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    else:
        reply = raw.parse()
        (call,) = reply.choices[0].message.tool_calls
        assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
            "call_1",
            "weather",
            {"city": "Oslo"},
        )
        assert reply.choices[0].finish_reason == "tool_calls"
    followup = [
        *question,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Snow"},
    ]
    providers.azure.queue.append(AzureReply(text="It snows."))
    second = (await azure(providers, messages=followup, tools=TOOLS)).parse()
    assert second.choices[0].message.content == "It snows."
    assert providers.azure.requests[1]["json"]["messages"] == followup
    assert providers.azure.rejected == []


@pytest.mark.parametrize("finish", ["length", "content_filter"])
async def test_azure_stop_reasons(providers: Providers, finish: str) -> None:
    providers.azure.queue.append(AzureReply(finish_reason=finish))
    assert (await azure(providers)).parse().choices[0].finish_reason == finish


CONTENT_FILTER = {
    "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
    "management policy. Please modify your prompt and retry.",
    "type": None,
    "param": "prompt",
    "code": "content_filter",
    "status": 400,
    "innererror": {
        "code": "ResponsibleAIPolicyViolation",
        "content_filter_result": {
            "hate": {"filtered": False, "severity": "safe"},
            "jailbreak": {"filtered": True, "detected": True},
            "violence": {"filtered": True, "severity": "medium"},
        },
    },
}
AZURE_ERRORS = [
    (
        AzureReply(
            status=429,
            error={
                "code": "429",
                "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI "
                "API version 2024-10-21 have exceeded token rate limit of your current pricing "
                "tier. Please retry after 7 seconds.",
            },
            headers={"Retry-After": "7", "retry-after-ms": "6500"},
        ),
        openai.RateLimitError,
        429,
        "rate_limit_exceeded",
    ),
    (
        AzureReply(status=400, error=CONTENT_FILTER),
        openai.BadRequestError,
        400,
        "content_filter",
    ),
    (
        AzureReply(
            status=400,
            error={
                "message": "This model's maximum context length is 128000 tokens. However, your "
                "messages resulted in 130000 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            },
        ),
        openai.BadRequestError,
        400,
        "context_length_exceeded",
    ),
    (
        AzureReply(
            status=404,
            error={"code": "DeploymentNotFound", "message": "The API deployment does not exist."},
        ),
        openai.InternalServerError,
        502,
        "upstream_deployment_not_found",
    ),
    (
        AzureReply(status=500, error={"code": "500", "message": "The server had an error."}),
        openai.InternalServerError,
        502,
        "upstream_unavailable",
    ),
    (
        AzureReply(status=503, error={"code": "503", "message": "The service is busy."}),
        openai.InternalServerError,
        502,
        "upstream_unavailable",
    ),
]


@pytest.mark.parametrize(("reply", "exc", "status", "code"), AZURE_ERRORS)
async def test_azure_error_classes(
    providers: Providers, reply: AzureReply, exc: type[Exception], status: int, code: str
) -> None:
    providers.azure.queue.append(reply)
    with pytest.raises(exc) as info:
        await azure(providers)
    err: Any = info.value
    assert (err.status_code, err.body["code"]) == (status, code)
    if status == 429:
        assert err.response.headers["Retry-After"] == "7"
    if code == "content_filter":
        assert err.body["message"] == (
            "Azure OpenAI's content filter rejected the prompt (filtered: jailbreak, violence)"
        )
    (record,) = await providers.new_audit_records()
    assert [(a["endpoint"], a["status"], a["error"]) for a in record["attempts"]] == [
        ("azure", reply.status, code)
    ]


async def test_azure_wrong_api_key_is_refused(providers: Providers) -> None:
    providers.azure.api_key = "another-key"
    with pytest.raises(openai.InternalServerError) as info:
        await azure(providers)
    err: Any = info.value
    assert (err.status_code, err.body["code"]) == (502, "upstream_auth_failed")
    assert providers.azure.rejected == ["unauthorized"]


@pytest.mark.parametrize("stream", [False, True])
async def test_failover_from_azure_to_bedrock(providers: Providers, stream: bool) -> None:
    providers.azure.queue.append(
        AzureReply(status=503, error={"code": "503", "message": "The service is busy."})
    )
    raw = await azure(providers, "azure-then-bedrock", stream=stream)
    assert raw.headers["X-Kamiwaza-Endpoint"] == "bedrock"
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    else:
        text = raw.parse().choices[0].message.content
    assert text == "Hello from Bedrock."
    (record,) = await providers.new_audit_records()
    assert [(a["endpoint"], a["error"]) for a in record["attempts"]] == [
        ("azure", "upstream_unavailable"),
        ("bedrock", None),
    ]


async def test_azure_secrets_never_reach_outputs(
    providers: Providers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outputs: list[Any] = []
    providers.azure.api_key = "another-key"
    providers.azure.queue.append(AzureReply(status=400, error=CONTENT_FILTER))
    for route in ("azure", "azure-entra"):
        try:
            outputs.append((await azure(providers, route)).parse().model_dump())
        except openai.APIStatusError as err:
            outputs.append(err.body)
    outputs.append(
        [c.model_dump() async for c in (await azure(providers, "azure-entra", stream=True)).parse()]
    )
    assert ENTRA_CLIENT  # the client id is not secret; the secret and the key are
    assert_no_canary(caplog.text, outputs, await providers.new_audit_records())

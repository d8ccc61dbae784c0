"""The Messages, count_tokens and Responses fronts before policy: what each
reads from a body, the 400 it answers for a malformed one, the prompt the
audit hash covers, and errors in each API's shape (the `anthropic` SDK raises
its own class for each status)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
from aiohttp import web
from anthropic.types.shared import ErrorResponse

from gateway.errors import (
    AuthenticationError,
    BadRequestError,
    GatewayError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PolicyUnavailableError,
    UpstreamError,
)
from gateway.fronts.base import ModelRequest
from gateway.fronts.messages import CountTokensFront, MessagesFront
from gateway.fronts.responses import ResponsesFront
from gateway.providers.adapter import MESSAGES, RESPONSES
from tests.processes import serve_app

GOOD: dict[str, Any] = {
    "model": "claude-x",
    "max_tokens": 10,
    "system": "Be brief.",
    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    "stream": True,
}


def test_the_messages_front_reads_a_body() -> None:
    headers = {"Anthropic-Version": "2023-06-01", "anthropic-beta": "b1,b2", "x-api-key": "k"}
    request = MessagesFront().parse(dict(GOOD), headers)
    assert request == ModelRequest(
        operation=MESSAGES,
        body=GOOD,
        stream=True,
        model="claude-x",
        prompt=[{"role": "system", "content": "Be brief."}, *GOOD["messages"]],
        headers={"anthropic-version": "2023-06-01", "anthropic-beta": "b1,b2"},
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": None}, "model: field required (a model name)"),
        ({"max_tokens": None}, "max_tokens: field required (an integer of at least 1)"),
        ({"max_tokens": 0}, "max_tokens: field required (an integer of at least 1)"),
        ({"max_tokens": True}, "max_tokens: field required (an integer of at least 1)"),
        ({"messages": []}, "messages: field required (a non-empty list of messages)"),
        ({"messages": ["hi"]}, "messages.0: must be an object"),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            "messages.0.role: must be 'user', 'assistant' or 'system'",
        ),
        (
            {"messages": [{"role": "system", "content": [{"type": "image"}]}]},
            "messages.0.content: a system turn may only hold text blocks",
        ),
        ({"messages": [{"role": "user"}]}, "messages.0.content: field required"),
        (
            {"messages": [{"role": "user", "content": 3}]},
            "messages.0.content: must be a string or a list of content blocks",
        ),
        (
            {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "messages.0.content.0: a content block must be an object with a 'type'",
        ),
        ({"system": [{"type": "image"}]}, "system: may only hold text blocks"),
        ({"stream": "yes"}, "'stream' must be true or false"),
        ({"stop_sequences": "END"}, "stop_sequences: must be a list of strings"),
        ({"temperature": "hot"}, "temperature: must be a number"),
        ({"tools": {"name": "x"}}, "tools: must be a list of tool definitions"),
        ({"tool_choice": "auto"}, "tool_choice: must be an object"),
        ({"tool_choice": {}}, "tool_choice.type: field required"),
    ],
)
def test_malformed_messages_bodies_get_a_400_in_anthropics_shape(
    change: dict[str, Any], message: str
) -> None:
    body = {**GOOD, **change}
    body = {k: v for k, v in body.items() if v is not None}
    front = MessagesFront()
    with pytest.raises(BadRequestError) as info:
        front.parse(body, {})
    assert (info.value.status, info.value.message) == (400, message)
    error = front.error_body(info.value)
    assert error == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
    }
    ErrorResponse.model_validate(error)


def test_count_tokens_needs_no_max_tokens_and_cannot_stream() -> None:
    body = {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}
    request = CountTokensFront().parse(dict(body), {})
    assert (request.operation, request.stream, request.model) == (MESSAGES, False, "claude-x")
    with pytest.raises(BadRequestError) as info:
        CountTokensFront().parse({**body, "stream": True}, {})
    assert info.value.message == "stream: count_tokens cannot be streamed"
    assert CountTokensFront.estimate(body) == {"input_tokens": 7, "estimated": True}


@pytest.mark.parametrize(
    ("err", "status", "error_type"),
    [
        (BadRequestError("bad"), 400, "invalid_request_error"),
        (AuthenticationError("who?"), 401, "authentication_error"),
        (PermissionDeniedError("no"), 403, "permission_error"),
        (NotFoundError("none"), 404, "not_found_error"),
        (PayloadTooLargeError("big"), 413, "request_too_large"),
        (UpstreamError("slow", status=429), 429, "rate_limit_error"),
        (GatewayError("oops"), 500, "api_error"),
        (UpstreamError("bad gateway"), 502, "api_error"),
        (PolicyUnavailableError("opa down"), 503, "overloaded_error"),
        (UpstreamError("timeout", status=504), 504, "timeout_error"),
        (UpstreamError("overloaded", status=529), 529, "overloaded_error"),
        (GatewayError("teapot", status=418), 418, "invalid_request_error"),
    ],
)
def test_gateway_errors_in_anthropics_shape(
    err: GatewayError, status: int, error_type: str
) -> None:
    assert err.status == status
    assert MessagesFront().error_body(err) == {
        "type": "error",
        "error": {"type": error_type, "message": err.message},
    }


@pytest.fixture
async def error_server() -> AsyncIterator[str]:
    """Answers `/v1/messages` with the gateway error named by the `x-status` header."""
    errors: dict[int, GatewayError] = {
        401: AuthenticationError("unknown key"),
        403: PermissionDeniedError("request denied by policy: no"),
        404: NotFoundError("no such route"),
        413: PayloadTooLargeError("request body too large"),
        503: PolicyUnavailableError("policy unavailable"),
    }

    async def handle(request: web.Request) -> web.Response:
        err = errors[int(request.headers["x-status"])]
        return web.json_response(MessagesFront().error_body(err), status=err.status)

    app = web.Application()
    app.router.add_post("/v1/messages", handle)
    runner, port = await serve_app(app)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (401, anthropic.AuthenticationError),
        (403, anthropic.PermissionDeniedError),
        (404, anthropic.NotFoundError),
        (413, anthropic.ContentTooLargeError),
        (503, anthropic.ServiceUnavailableError),
    ],
)
async def test_the_sdk_raises_its_own_class_for_each_status(
    error_server: str, status: int, error_class: type[anthropic.APIStatusError]
) -> None:
    async with anthropic.AsyncAnthropic(
        api_key="k", base_url=error_server, max_retries=0
    ) as client:
        with pytest.raises(error_class) as info:
            await client.messages.create(
                model="m",
                max_tokens=1,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-status": str(status)},
            )
    assert info.value.status_code == status
    assert (
        info.value.type
        == MessagesFront().error_body(GatewayError("x", status=status))["error"]["type"]
    )  # type: ignore[attr-defined]


def test_the_responses_front_reads_a_body() -> None:
    body = {"model": "gpt-5", "instructions": "Be brief.", "input": "hi", "stream": False}
    request = ResponsesFront().parse(dict(body), {})
    assert request == ModelRequest(
        operation=RESPONSES,
        body=body,
        stream=False,
        model="gpt-5",
        prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    )
    stateful = ResponsesFront().parse({"model": "gpt-5", "previous_response_id": "resp_1"}, {})
    assert stateful.prompt == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": None}, "'model' is required: a model name"),
        ({"input": None}, "'input' is required: a string or a list of input items"),
        ({"input": 5}, "'input' must be a string or a list of input items"),
        ({"input": ["hi"]}, "input[0] must be an object"),
        (
            {"input": [{"type": "message", "content": "x"}]},
            "input[0]: a message needs a 'role' and 'content'",
        ),
        ({"instructions": 3}, "'instructions' must be a string"),
        ({"stream": "no"}, "'stream' must be true or false"),
        ({"store": 1}, "'store' must be true or false"),
        ({"max_output_tokens": 0}, "'max_output_tokens' must be a positive integer"),
        ({"temperature": "x"}, "'temperature' must be a number"),
        ({"tools": [1]}, "'tools' must be a list of tool definitions"),
        ({"text": "json"}, "'text' must be an object"),
        ({"previous_response_id": 7}, "'previous_response_id' must be a string"),
    ],
)
def test_malformed_responses_bodies_get_a_400_in_openais_shape(
    change: dict[str, Any], message: str
) -> None:
    body = {k: v for k, v in {"model": "gpt-5", "input": "hi", **change}.items() if v is not None}
    front = ResponsesFront()
    with pytest.raises(BadRequestError) as info:
        front.parse(body, {})
    assert front.error_body(info.value) == {
        "error": {"message": message, "type": "invalid_request_error", "code": "invalid_body"}
    }

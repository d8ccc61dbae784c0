"""InvokeModel, InvokeModelWithResponseStream and CountTokens for Claude on the
fake Bedrock runtime (tests/fake_bedrock.py): Anthropic's Messages body as
Bedrock takes it (`anthropic_version: bedrock-2023-05-31`, no `model` or
`stream`, `anthropic_beta` a list), checked against the `anthropic` package's
`MessageCreateParams`; the answer from the Claude simulator; streams as
`chunk` events carrying each Anthropic event base64 in `bytes`, the last with
Bedrock's `amazon-bedrock-invocationMetrics`."""

from __future__ import annotations

import base64
import json
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import botocore.session
from aiohttp import web
from botocore.validate import ParamValidator

from tests.aws_wire import event, verify_sigv4
from tests.fake_anthropic import (
    ClaudeResponder,
    count_tokens,
    validate_count_tokens,
    validate_request,
)

_SERVICE_MODEL = botocore.session.get_session().get_service_model("bedrock-runtime")
INVOKE_INPUT = _SERVICE_MODEL.operation_model("InvokeModel").input_shape
COUNT_TOKENS_INPUT = _SERVICE_MODEL.operation_model("CountTokens").input_shape
BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"


@dataclass(frozen=True)
class Received:
    path: str
    model_id: str
    headers: dict[str, str]
    json: Any
    raw: bytes = b""


class InvokeModelRoutes:
    """Mixed into FakeBedrock, whose state (secrets, requests, rejected) it uses."""

    region: str
    secrets: dict[str, tuple[str, str | None]]
    requests: list[Received]
    rejected: list[str]
    claude: ClaudeResponder
    invoke_errors: deque[tuple[str, int, str]]

    @staticmethod
    def _error(kind: str, status: int, message: str) -> web.Response:
        raise NotImplementedError

    def add_invoke_routes(self, app: web.Application) -> None:
        app.router.add_post("/model/{model_id}/invoke", self._invoke)
        app.router.add_post("/model/{model_id}/invoke-with-response-stream", self._invoke_stream)
        app.router.add_post("/model/{model_id}/count-tokens", self._count_tokens)

    async def _signed_body(self, request: web.Request) -> tuple[bytes, str] | web.Response:
        body = await request.read()
        model_id = unquote(request.raw_path.split("/")[2])
        problem = verify_sigv4(
            request, body, service="bedrock", region=self.region, secrets=self.secrets
        )
        if problem is not None:
            self.rejected.append(problem[0])
            return self._error(problem[0], 403, problem[1])
        return body, model_id

    def _claude_body(self, raw: bytes, model_id: str) -> dict[str, Any] | web.Response:
        """The Messages body of an InvokeModel body, or Bedrock's 400."""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        problem = None
        if not isinstance(body, dict) or body.get("anthropic_version") != BEDROCK_ANTHROPIC_VERSION:
            problem = f"anthropic_version: must be {BEDROCK_ANTHROPIC_VERSION}"
        elif "model" in body or "stream" in body:
            problem = "extraneous key [model/stream] is not permitted"
        else:
            beta = body.get("anthropic_beta", [])
            if not isinstance(beta, list) or not all(isinstance(b, str) for b in beta):
                problem = "anthropic_beta: must be a list of strings"
        if problem is None:
            assert isinstance(body, dict)
            rest = {
                k: v for k, v in body.items() if k not in ("anthropic_version", "anthropic_beta")
            }
            problem = validate_request({"model": model_id, **rest}, version="2023-06-01")
        if problem is not None:
            self.rejected.append("ValidationException")
            return self._error("ValidationException", 400, problem)
        return {"model": model_id, **rest}

    async def _invoke_checked(
        self, request: web.Request, *, stream: bool
    ) -> web.Response | tuple[dict[str, Any], str]:
        signed = await self._signed_body(request)
        if isinstance(signed, web.Response):
            return signed
        raw, model_id = signed
        self.requests.append(
            Received(request.path, model_id, dict(request.headers), json.loads(raw), raw)
        )
        shape_input = {"modelId": model_id, "body": raw, "contentType": "application/json"}
        report = ParamValidator().validate(shape_input, INVOKE_INPUT)
        if report.has_errors():
            return self._error("ValidationException", 400, report.generate_report())
        body = self._claude_body(raw, model_id)
        if isinstance(body, web.Response):
            return body
        if self.invoke_errors:
            kind, status, message = self.invoke_errors.popleft()
            return self._error(kind, status, message)
        return body, model_id

    async def _invoke(self, request: web.Request) -> web.Response:
        checked = await self._invoke_checked(request, stream=False)
        if isinstance(checked, web.Response):
            return checked
        body, model_id = checked
        return web.json_response(self.claude.message(body, model_id))

    async def _invoke_stream(self, request: web.Request) -> web.StreamResponse:
        checked = await self._invoke_checked(request, stream=True)
        if isinstance(checked, web.Response):
            return checked
        body, model_id = checked
        events = [payload for _, payload in self.claude.events(body, model_id)]
        messages = []
        for anthropic_event in events:
            payload = anthropic_event
            if payload["type"] == "message_stop":
                payload = {
                    **anthropic_event,
                    "amazon-bedrock-invocationMetrics": {
                        "inputTokenCount": 3,
                        "outputTokenCount": 4,
                        "invocationLatency": 420,
                        "firstByteLatency": 120,
                    },
                }
            data = base64.b64encode(json.dumps(payload).encode()).decode()
            messages.append(event("chunk", {"bytes": data}))
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/vnd.amazon.eventstream",
                "x-amzn-RequestId": "4b1e1d1c-0000-4000-8000-000000000003",
            }
        )
        await response.prepare(request)
        for message in messages:
            await response.write(message)
        await response.write_eof()
        return response

    async def _count_tokens(self, request: web.Request) -> web.Response:
        signed = await self._signed_body(request)
        if isinstance(signed, web.Response):
            return signed
        raw, model_id = signed
        payload = json.loads(raw)
        self.requests.append(Received(request.path, model_id, dict(request.headers), payload, raw))
        report = ParamValidator().validate({"modelId": model_id, **payload}, COUNT_TOKENS_INPUT)
        if report.has_errors():
            return self._error("ValidationException", 400, report.generate_report())
        inner = base64.b64decode(payload["input"]["invokeModel"]["body"])
        body = self._claude_body(inner, model_id)
        if isinstance(body, web.Response):
            return body
        counted = {k: v for k, v in body.items() if k != "max_tokens"}
        problem = validate_count_tokens(counted)
        if problem is not None:
            return self._error("ValidationException", 400, problem)
        return web.json_response({"inputTokens": count_tokens(counted)})

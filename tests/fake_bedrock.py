"""A fake AWS Bedrock runtime and a fake STS, real aiohttp servers on loopback.

The Bedrock server speaks the Converse / ConverseStream wire protocol: it
recomputes every request's SigV4 signature with botocore (`SigV4Auth` over the
request as received, with the secret of the access key it names) and answers
403 `InvalidSignatureException` when it differs; it validates the request body
against botocore's own service model for bedrock-runtime
(`botocore.validate.ParamValidator` on the Converse input shape); it answers
Converse JSON, or ConverseStream events in real AWS event-stream framing
(prelude, headers, CRC32s) and AWS's error shapes (`x-amzn-ErrorType` and a
JSON `message`; exception messages mid-stream).

`InvokeModel` serves the embedding models (Titan Text Embeddings, Cohere
Embed) with the same checks: see tests/fake_bedrock_embeddings.py. For Claude
models it also serves InvokeModel (`/model/{id}/invoke`),
InvokeModelWithResponseStream (`/invoke-with-response-stream`: each Anthropic
event base64 in a `chunk` event's `bytes`, the last with Bedrock's
`amazon-bedrock-invocationMetrics`) and CountTokens (`/count-tokens`), with
Anthropic's Messages body checked as Bedrock takes it (`anthropic_version:
bedrock-2023-05-31`, no `model` or `stream`, `anthropic_beta` a list) and
against the `anthropic` package's `MessageCreateParams`.

(tests/fake_bedrock_invoke.py has the InvokeModel routes.)

The STS server answers `AssumeRole` (query protocol, XML), also checking the
caller's SigV4 signature, and registers the session credentials it issues with
the Bedrock server, which then accepts them with their session token only.

    sts = await FakeSts(bedrock).start()
    bedrock.queue.append(Reply(text="Hi"))       # the next request
    bedrock.queue.append(Reply(error=("ThrottlingException", 429, "Too many requests")))
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote

import botocore.session
from aiohttp import web
from botocore.validate import ParamValidator

from tests.aws_wire import encode_message, event, exception, verify_sigv4
from tests.fake_anthropic import ClaudeResponder, ClaudeSimulator
from tests.fake_bedrock_invoke import InvokeModelRoutes, Received
from tests.processes import serve_app

__all__ = [
    "CONVERSE_INPUT",
    "CONVERSE_STREAM_INPUT",
    "FakeBedrock",
    "FakeSts",
    "Received",
    "Reply",
    "encode_message",
    "event",
    "exception",
    "verify_sigv4",
]

_SERVICE_MODEL = botocore.session.get_session().get_service_model("bedrock-runtime")
CONVERSE_INPUT = _SERVICE_MODEL.operation_model("Converse").input_shape
CONVERSE_STREAM_INPUT = _SERVICE_MODEL.operation_model("ConverseStream").input_shape
INVOKE_MODEL_INPUT = _SERVICE_MODEL.operation_model("InvokeModel").input_shape

# ---------------------------------------------------------------------------
# The Bedrock runtime.


@dataclass
class Reply:
    """How the fake answers one request (the defaults answer "Hello from Bedrock")."""

    text: str | None = "Hello from Bedrock."
    tool_calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    stop_reason: str | None = None  # default: tool_use with tool calls, else end_turn
    usage: dict[str, int] | None = None  # default: words in, pieces out
    error: tuple[str, int, str] | None = None  # (exception type, HTTP status, message)
    stream_exception: tuple[str, str] | None = None  # (exception type, message)
    exception_after_events: int = 3  # events sent before the stream exception
    gate_exception: bool = False  # wait for FakeBedrock.gate before sending the exception
    split_bytes: int | None = None  # write the stream in pieces of this many bytes
    cut_after_events: int | None = None  # close the stream (no messageStop) after N events
    hang: bool = False


class FakeBedrock(InvokeModelRoutes):
    def __init__(self, *, region: str = "us-east-1", host: str = "127.0.0.1") -> None:
        self.region = region
        self.host = host
        self.port = 0
        self.secrets: dict[str, tuple[str, str | None]] = {}
        self.queue: deque[Reply] = deque()
        self.requests: list[Received] = []
        self.rejected: list[str] = []  # signature / validation failures
        self._runner: web.AppRunner | None = None
        self._hang = asyncio.Event()
        self.gate = asyncio.Event()  # opened by a test (see Reply.gate_exception)
        # InvokeModel answers carry X-Amzn-Bedrock-Input-Token-Count (false: they do not).
        self.report_input_tokens = True
        self.claude = ClaudeResponder(ClaudeSimulator())  # InvokeModel's Claude
        self.invoke_errors: deque[tuple[str, int, str]] = deque()  # next InvokeModel errors

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def allow(self, access_key: str, secret: str, token: str | None = None) -> None:
        self.secrets[access_key] = (secret, token)

    async def start(self) -> FakeBedrock:
        app = web.Application()
        app.router.add_post("/model/{model_id}/converse", self._converse)
        app.router.add_post("/model/{model_id}/converse-stream", self._converse_stream)
        self.add_invoke_routes(app)
        self._runner, self.port = await serve_app(app, self.host)
        return self

    async def close(self) -> None:
        self._hang.set()
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _invoke(self, request: web.Request) -> web.Response:
        """InvokeModel: an embedding model's body, or (InvokeModelRoutes) Claude's."""
        model_id = unquote(request.raw_path.split("/")[2])
        if "embed" not in model_id:
            return await super()._invoke(request)
        # Imported here: the embeddings module builds on this one's SigV4 check.
        from tests.fake_bedrock_embeddings import invoke

        return await invoke(self, request)

    @staticmethod
    def _error(kind: str, status: int, message: str) -> web.Response:
        return web.json_response(
            {"message": message},
            status=status,
            headers={
                "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"
            },
        )

    async def _check(
        self, request: web.Request, *, stream: bool
    ) -> web.Response | tuple[Any, Reply]:
        body = await request.read()
        # The model id is one path segment, percent-decoded as AWS does.
        model_id = unquote(request.raw_path.split("/")[2])
        problem = verify_sigv4(
            request, body, service="bedrock", region=self.region, secrets=self.secrets
        )
        if problem is not None:
            self.rejected.append(problem[0])
            return self._error(problem[0], 403, problem[1])
        payload = json.loads(body)
        self.requests.append(Received(request.path, model_id, dict(request.headers), payload))
        shape = CONVERSE_STREAM_INPUT if stream else CONVERSE_INPUT
        report = ParamValidator().validate({"modelId": model_id, **payload}, shape)
        if report.has_errors():
            self.rejected.append("ValidationException")
            return self._error("ValidationException", 400, report.generate_report())
        reply = self.queue.popleft() if self.queue else Reply()
        if reply.hang:
            await self._hang.wait()
        if reply.error is not None:
            kind, status, message = reply.error
            return self._error(kind, status, message)
        return payload, reply

    @staticmethod
    def _usage(payload: Any, reply: Reply, pieces: int) -> dict[str, int]:
        if reply.usage is not None:
            usage = dict(reply.usage)
        else:
            words = sum(
                len(str(b.get("text", "")).split())
                for m in payload["messages"]
                for b in m["content"]
            )
            usage = {"inputTokens": words, "outputTokens": pieces}
        usage["totalTokens"] = sum(
            usage.get(k, 0)
            for k in (
                "inputTokens",
                "outputTokens",
                "cacheReadInputTokens",
                "cacheWriteInputTokens",
            )
        )
        return usage

    @staticmethod
    def _pieces(reply: Reply) -> list[str]:
        if not reply.text:
            return []
        words = reply.text.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

    @staticmethod
    def _stop(reply: Reply) -> str:
        return reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn")

    async def _converse(self, request: web.Request) -> web.Response:
        checked = await self._check(request, stream=False)
        if isinstance(checked, web.Response):
            return checked
        payload, reply = checked
        content: list[dict[str, Any]] = []
        if reply.text:
            content.append({"text": reply.text})
        for tool_id, name, arguments in reply.tool_calls:
            content.append({"toolUse": {"toolUseId": tool_id, "name": name, "input": arguments}})
        return web.json_response(
            {
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": self._stop(reply),
                "usage": self._usage(payload, reply, len(self._pieces(reply))),
                "metrics": {"latencyMs": 42},
            },
            headers={"x-amzn-RequestId": "4b1e1d1c-0000-4000-8000-000000000001"},
        )

    def _events(self, payload: Any, reply: Reply) -> list[bytes]:
        events = [event("messageStart", {"role": "assistant"})]
        index = 0
        pieces = self._pieces(reply)
        if pieces:
            for piece in pieces:
                events.append(
                    event("contentBlockDelta", {"delta": {"text": piece}, "contentBlockIndex": 0})
                )
            events.append(event("contentBlockStop", {"contentBlockIndex": 0}))
            index = 1
        for tool_id, name, arguments in reply.tool_calls:
            events.append(
                event(
                    "contentBlockStart",
                    {
                        "start": {"toolUse": {"toolUseId": tool_id, "name": name}},
                        "contentBlockIndex": index,
                    },
                )
            )
            text = json.dumps(arguments)
            half = len(text) // 2
            for part in (text[:half], text[half:]):
                events.append(
                    event(
                        "contentBlockDelta",
                        {"delta": {"toolUse": {"input": part}}, "contentBlockIndex": index},
                    )
                )
            events.append(event("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        events.append(event("messageStop", {"stopReason": self._stop(reply)}))
        events.append(
            event(
                "metadata",
                {"usage": self._usage(payload, reply, len(pieces)), "metrics": {"latencyMs": 42}},
            )
        )
        return events

    async def _converse_stream(self, request: web.Request) -> web.StreamResponse:
        checked = await self._check(request, stream=True)
        if isinstance(checked, web.Response):
            return checked
        payload, reply = checked
        events = self._events(payload, reply)
        if reply.stream_exception is not None:
            events = [*events[: reply.exception_after_events], exception(*reply.stream_exception)]
        if reply.cut_after_events is not None:
            events = events[: reply.cut_after_events]
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/vnd.amazon.eventstream",
                "x-amzn-RequestId": "4b1e1d1c-0000-4000-8000-000000000002",
            }
        )
        await response.prepare(request)
        if reply.stream_exception is not None and reply.gate_exception:
            for message in events[:-1]:
                await response.write(message)
            await self.gate.wait()
            events = events[-1:]
        data = b"".join(events)
        step = reply.split_bytes or 0
        if step:
            for start in range(0, len(data), step):
                await response.write(data[start : start + step])
        else:
            for message in events:
                await response.write(message)
        await response.write_eof()
        return response


# ---------------------------------------------------------------------------
# STS.


class FakeSts:
    """`AssumeRole` for the roles in `roles`, issuing credentials Bedrock accepts."""

    def __init__(
        self, bedrock: FakeBedrock, *, region: str = "us-east-1", lifetime_s: int = 3600
    ) -> None:
        self.bedrock = bedrock
        self.region = region
        self.lifetime_s = lifetime_s
        self.secrets: dict[str, tuple[str, str | None]] = {}
        self.roles: set[str] = set()
        self.calls: list[dict[str, str]] = []
        self.rejected: list[str] = []
        self.port = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeSts:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner, self.port = await serve_app(app)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.Response(
            status=status,
            content_type="text/xml",
            text=(
                '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
                "<RequestId>00000000-0000-4000-8000-000000000000</RequestId></ErrorResponse>"
            ),
        )

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = verify_sigv4(
            request, body, service="sts", region=self.region, secrets=self.secrets
        )
        if problem is not None:
            self.rejected.append(problem[0])
            return self._error(403, problem[0].removesuffix("Exception"), problem[1])
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        self.calls.append(form)
        if form.get("Action") != "AssumeRole":
            return self._error(400, "InvalidAction", "unsupported action")
        role = form.get("RoleArn", "")
        if role not in self.roles:
            return self._error(
                403, "AccessDenied", f"not authorized to perform sts:AssumeRole on {role}"
            )
        n = next(self._ids)
        key, secret, token = (
            f"ASIAFAKE{n:012d}",
            f"assumed-secret-{n}",
            f"assumed-session-token-{n}",
        )
        self.bedrock.allow(key, secret, token)
        expires = datetime.now(UTC) + timedelta(seconds=self.lifetime_s)
        session = form.get("RoleSessionName", "")
        assumed_arn = role.replace(":iam::", ":sts::").replace(":role/", ":assumed-role/")
        return web.Response(
            content_type="text/xml",
            text=(
                '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                "<AssumeRoleResult><Credentials>"
                f"<AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>"
                f"<SessionToken>{token}</SessionToken>"
                f"<Expiration>{expires.strftime('%Y-%m-%dT%H:%M:%SZ')}</Expiration>"
                "</Credentials><AssumedRoleUser>"
                f"<AssumedRoleId>AROAFAKE:{session}</AssumedRoleId>"
                f"<Arn>{assumed_arn}/{session}</Arn>"
                "</AssumedRoleUser></AssumeRoleResult>"
                "<ResponseMetadata><RequestId>00000000-0000-4000-8000-000000000001</RequestId>"
                "</ResponseMetadata></AssumeRoleResponse>"
            ),
        )

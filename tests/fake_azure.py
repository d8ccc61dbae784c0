"""A fake Azure OpenAI resource and Microsoft Entra ID token endpoint on loopback.

The resource serves `POST /openai/deployments/{deployment}/chat/completions
?api-version=...` and the Responses API (`POST /openai/v1/responses`, or
`/openai/responses?api-version=...`, the deployment as the body's `model`; see
tests/fake_responses.py), and accepts either its `api-key` or a bearer token that the
fake Entra endpoint issued (and that has not expired). The token endpoint
(`POST /{tenant}/oauth2/v2.0/token`) implements the client-credentials grant:
it checks the client id, the secret and the Azure OpenAI scope. Request bodies
are validated with the `openai` package's own request types. Answers carry
Azure's extras: `prompt_filter_results` and per-choice `content_filter_results`
(and, in streams, Azure's leading chunk with empty `choices`); errors use
Azure's shapes (a numeric string `code`, `DeploymentNotFound`, content filter
results under `innererror`, `Retry-After` and `retry-after-ms` on 429).

`POST /openai/deployments/{embedding_deployment}/embeddings?api-version=...`
serves embeddings with the same auth and error replies (the queue of
`AzureReply`); bodies are checked against the openai package's
`EmbeddingCreateParams` (plus Azure's `input_type`), vectors come from
tests/fake_embeddings.py.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from aiohttp import web
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from pydantic import TypeAdapter, ValidationError

from tests.fake_embeddings import openai_answer, validate_openai_embeddings
from tests.fake_responses import ResponsesSimulator
from tests.processes import serve_app

SCOPE = "https://cognitiveservices.azure.com/.default"
FILTER_OK = {
    name: {"filtered": False, "severity": "safe"}
    for name in ("hate", "self_harm", "sexual", "violence")
}


def validate_openai_request(body: dict[str, Any]) -> str | None:
    """None when `body` is a valid Chat Completions request per the openai package."""
    params = (
        CompletionCreateParamsStreaming
        if body.get("stream")
        else CompletionCreateParamsNonStreaming
    )
    unknown = set(body) - set(get_type_hints(params))
    if unknown:
        return f"Unrecognized request arguments supplied: {', '.join(sorted(unknown))}"
    try:
        validated = TypeAdapter(params).validate_python(body)
        for message in list(validated["messages"]):
            content = message.get("content")
            if content is not None and not isinstance(content, str):
                list(content)
    except ValidationError as err:
        return str(err)
    return None


@dataclass
class AzureReply:
    text: str | None = "Hello from Azure."
    tool_calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    finish_reason: str | None = None
    status: int = 200
    error: dict[str, Any] | None = None  # the `error` object of a non-2xx answer
    headers: dict[str, str] = field(default_factory=dict)


class FakeAzure:
    def __init__(
        self,
        *,
        api_key: str,
        tenant: str,
        client_id: str,
        client_secret: str,
        deployment: str = "gpt-4o",
        embedding_deployment: str = "text-embedding-3-small",
        token_lifetime_s: int = 3600,
    ) -> None:
        self.embedding_deployment = embedding_deployment
        self.embedding_dimensions = 16
        self.api_key = api_key
        self.tenant = tenant
        self.client_id = client_id
        self.client_secret = client_secret
        self.deployment = deployment
        self.token_lifetime_s = token_lifetime_s
        self.tokens: dict[str, float] = {}  # issued token -> expiry (epoch)
        self.token_requests = 0
        self.queue: deque[AzureReply] = deque()
        self.requests: list[dict[str, Any]] = []  # {"query", "headers", "json"}
        self.rejected: list[str] = []
        self.port = 0
        self._ids = itertools.count(1)
        self.responses = ResponsesSimulator()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeAzure:
        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        app.router.add_post("/openai/deployments/{deployment}/embeddings", self._embeddings)
        app.router.add_post("/openai/v1/responses", self._responses)
        app.router.add_post("/openai/responses", self._responses)
        self._runner, self.port = await serve_app(app)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- Entra ID -------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if request.match_info["tenant"] != self.tenant:
            return web.json_response(
                {"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found."},
                status=400,
            )
        if form.get("grant_type") != "client_credentials" or form.get("scope") != SCOPE:
            return web.json_response(
                {"error": "invalid_scope", "error_description": "AADSTS70011: invalid scope"},
                status=400,
            )
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            self.rejected.append("invalid_client")
            return web.json_response(
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                    "error_codes": [7000215],
                },
                status=401,
            )
        token = f"entra-access-token-{next(self._ids)}"
        self.tokens[token] = time.time() + self.token_lifetime_s
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime_s,
                "ext_expires_in": self.token_lifetime_s,
                "access_token": token,
            }
        )

    # -- Chat Completions -----------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        if "api-key" in request.headers:
            return request.headers["api-key"] == self.api_key
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        return auth.startswith("Bearer ") and self.tokens.get(token, 0) > time.time()

    @staticmethod
    def _error(
        status: int, error: dict[str, Any], headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.json_response({"error": error}, status=status, headers=headers or {})

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        """The Responses API: `/openai/v1/responses` (the v1 surface, no api-version)
        or `/openai/responses?api-version=...` (preview); the deployment is `model`."""
        if request.path == "/openai/responses" and not request.query.get("api-version"):
            return self._error(404, {"code": "404", "message": "Resource not found"})
        if not self._authorized(request):
            self.rejected.append("unauthorized")
            return self._error(401, {"code": "401", "message": "Access denied"})
        body = await request.json()
        self.requests.append(
            {"query": dict(request.query), "headers": dict(request.headers), "json": body}
        )
        if not isinstance(body, dict) or body.get("model") != self.deployment:
            return self._error(
                404,
                {"code": "DeploymentNotFound", "message": "The API deployment does not exist."},
            )
        return await self.responses.handle(request, body, model="gpt-4o-2024-11-20")

    def _refusal(self, request: web.Request, deployment: str) -> web.Response | None:
        """The answer to a request without an API version, credential or deployment."""
        api_version = request.query.get("api-version")
        if not api_version:
            return self._error(404, {"code": "404", "message": "Resource not found"})
        if not self._authorized(request):
            self.rejected.append("unauthorized")
            return self._error(
                401,
                {
                    "code": "401",
                    "message": "Access denied due to invalid subscription key or wrong API "
                    "endpoint. Make sure to provide a valid key for an active subscription and "
                    "use a correct regional API endpoint for your resource.",
                },
            )
        if request.match_info["deployment"] != deployment:
            return self._error(
                404,
                {
                    "code": "DeploymentNotFound",
                    "message": "The API deployment for this resource does not exist. If you "
                    "created the deployment within the last 5 minutes, please wait a moment "
                    "and try again.",
                },
            )
        return None

    async def _embeddings(self, request: web.Request) -> web.Response:
        refused = self._refusal(request, self.embedding_deployment)
        if refused is not None:
            return refused
        body = await request.json()
        self.requests.append(
            {"query": dict(request.query), "headers": dict(request.headers), "json": body}
        )
        problem = validate_openai_embeddings(body, extra=frozenset({"input_type"}))
        if problem is not None:
            self.rejected.append("invalid_body")
            return self._error(
                400, {"code": None, "message": problem, "type": "invalid_request_error"}
            )
        reply = self.queue.popleft() if self.queue else AzureReply()
        if reply.status != 200:
            return self._error(reply.status, reply.error or {}, reply.headers)
        answer = openai_answer(
            body, model="text-embedding-3-small", dimensions=self.embedding_dimensions
        )
        return web.json_response(answer)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        refused = self._refusal(request, self.deployment)
        if refused is not None:
            return refused
        body = await request.json()
        self.requests.append(
            {"query": dict(request.query), "headers": dict(request.headers), "json": body}
        )
        problem = validate_openai_request(body)
        if problem is not None:
            self.rejected.append("invalid_body")
            return self._error(
                400, {"code": None, "message": problem, "type": "invalid_request_error"}
            )
        reply = self.queue.popleft() if self.queue else AzureReply()
        if reply.status != 200:
            return self._error(reply.status, reply.error or {}, reply.headers)
        completion_id = f"chatcmpl-azure-{next(self._ids)}"
        words = (reply.text or "").split(" ") if reply.text else []
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        prompt = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(pieces),
            "total_tokens": prompt + len(pieces),
        }
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        calls = [
            {
                "id": cid,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for cid, name, args in reply.tool_calls
        ]
        model = "gpt-4o-2024-11-20"
        if not body.get("stream"):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": reply.text if reply.text else None,
            }
            if calls:
                message["tool_calls"] = calls
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "prompt_filter_results": [
                        {"prompt_index": 0, "content_filter_results": FILTER_OK}
                    ],
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "logprobs": None,
                            "finish_reason": finish,
                            "content_filter_results": FILTER_OK,
                        }
                    ],
                    "usage": usage,
                    "system_fingerprint": "fp_azure",
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        created = int(time.time())

        async def send(payload: Any) -> None:
            await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                        "content_filter_results": FILTER_OK if delta.get("content") else {},
                    }
                ],
                "system_fingerprint": "fp_azure",
            }

        # Azure's first chunk: the prompt's filter results, no choices.
        await send(
            {
                "id": "",
                "object": "",
                "created": 0,
                "model": "",
                "choices": [],
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTER_OK}],
            }
        )
        await send(chunk({"role": "assistant", "content": ""}, None))
        for piece in pieces:
            await send(chunk({"content": piece}, None))
        for index, call in enumerate(calls):
            await send(chunk({"tool_calls": [{"index": index, **call}]}, None))
        await send(chunk({}, finish))
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            await send(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

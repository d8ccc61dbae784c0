"""A fake GCP Vertex AI on loopback: an OAuth token endpoint and the
prediction API, for Gemini and for Claude.

Authentication is checked for real. :func:`make_service_account` generates an
RSA key and a service-account JSON key file whose `token_uri` points at the
fake's token endpoint. google-auth (in the gateway) signs a JWT assertion with
the private key and exchanges it at `POST /token`; the fake verifies the
assertion's RS256 signature with the public key, its key id, issuer, audience, scope
and lifetime, and only then issues an access token. The prediction API accepts
only unexpired tokens it issued, as `Authorization: Bearer`.

Prediction API, on `/v1/projects/{project}/locations/{location}/publishers/...`:
- `google/models/{model}:generateContent`, and `:streamGenerateContent?alt=sse`
  (one SSE event per partial `GenerateContentResponse`; the stream just ends).
  Request bodies are validated with the `google-genai` package's types
  (`Content`, `GenerationConfig`, `Tool`, `ToolConfig`, all `extra="forbid"`),
  answers with its `GenerateContentResponse`. A simulated Gemini answers like
  the Claude simulator (tests/fake_anthropic.py): text echo, function calls
  (with a `thoughtSignature` that must come back with the call, as Gemini 3
  requires), `MAX_TOKENS`, stop sequences.
- `anthropic/models/{model}:rawPredict` and `:streamRawPredict`: the Anthropic
  Messages API with the model in the URL and `anthropic_version` in the body
  (`vertex-2023-10-16` or `2026-10-21`), validated against `MessageCreateParams`;
  `anthropic/models/count-tokens:rawPredict`: Anthropic's count_tokens body
  (the model in it), validated against `MessageCountTokensParams`.
- `google/models/{model}:predict`: text embeddings (`text-embedding-005`,
  `gemini-embedding-001`, ...), see tests/fake_vertex_embeddings.py.
Errors are Google's `{"error": {"code", "message", "status", "details"}}`;
Claude's own errors keep Anthropic's shape.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.genai import types as genai
from multidict import CIMultiDict
from pydantic import TypeAdapter, ValidationError

from tests.fake_anthropic import (
    ClaudeResponder,
    ClaudeSimulator,
    Failure,
    anthropic_error,
    count_tokens,
    validate_count_tokens,
    validate_request,
    write_events,
)
from tests.processes import serve_app

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth addresses every assertion to Google's token endpoint, wherever
# `token_uri` sends it; Google's endpoint checks exactly that audience.
ASSERTION_AUDIENCE = "https://oauth2.googleapis.com/token"
CLAUDE_VERSIONS = ("vertex-2023-10-16", "2026-10-21")
GEMINI_KEYS = {
    "contents": list[genai.Content],
    "systemInstruction": genai.Content,
    "generationConfig": genai.GenerationConfig,
    "tools": list[genai.Tool],
    "toolConfig": genai.ToolConfig,
    "safetySettings": list[genai.SafetySetting],
    "labels": dict[str, str],
}
SIGNATURE = base64.b64encode(b"fake-thought-signature").decode()
_JSON_OBJECT = re.compile(r"\{.*\}", re.S)
_MODEL_PATH = re.compile(r"^(?P<model>[A-Za-z0-9._@-]+):(?P<method>[A-Za-z]+)$")


@dataclass(frozen=True)
class ServiceAccount:
    path: Path
    info: dict[str, Any]
    public_pem: bytes

    @property
    def email(self) -> str:
        return str(self.info["client_email"])


def make_service_account(directory: Path, token_uri: str, name: str = "gateway") -> ServiceAccount:
    """A fresh RSA key and its service-account JSON key file."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = {
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": secrets.token_hex(20),
        "private_key": private_pem,
        "client_email": f"{name}@test-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/x",
        "universe_domain": "googleapis.com",
    }
    path = directory / f"{name}-sa.json"
    path.write_text(json.dumps(info))
    return ServiceAccount(path, info, public_pem)


def google_error(status: int, google_status: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": status, "message": message, "status": google_status}}, status=status
    )


@dataclass
class GoogleFailure:
    """Answer the next request with a Google API error (or an in-stream one)."""

    status: int
    google_status: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    in_stream: bool = False


@dataclass(frozen=True)
class Recorded:
    path: str
    query: str
    headers: CIMultiDict[str]
    json: Any
    raw: bytes = b""


class GeminiSimulator:
    """A deterministic stand-in for Gemini, driven by the request body."""

    def __init__(self) -> None:
        self.cached_tokens = 0

    @staticmethod
    def _text(parts: list[dict[str, Any]]) -> str:
        return " ".join(p["text"] for p in parts if "text" in p)

    def answer(
        self, body: dict[str, Any], model: str
    ) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
        """(parts, finishReason, usageMetadata)."""
        contents = body["contents"]
        last = contents[-1]["parts"]
        responses = [p["functionResponse"] for p in last if "functionResponse" in p]
        declared = [
            d["name"]
            for tool in body.get("tools") or ()
            for d in tool.get("functionDeclarations") or ()
        ]
        mode = (((body.get("toolConfig") or {}).get("functionCallingConfig")) or {}).get("mode")
        config = body.get("generationConfig") or {}
        user_text = self._text(last)
        prompt = sum(len(self._text(c["parts"]).split()) for c in contents)
        if body.get("systemInstruction"):
            prompt += len(self._text(body["systemInstruction"]["parts"]).split())
        parts: list[dict[str, Any]]
        finish = "STOP"
        if responses:
            text = "The tool said: " + " ".join(
                json.dumps(r["response"], sort_keys=True) for r in responses
            )
            parts = [{"text": text}]
        elif (named := [n for n in declared if n in user_text]) and mode != "NONE":
            match = _JSON_OBJECT.search(user_text)
            args = json.loads(match.group(0)) if match else {}
            parts = [
                {"functionCall": {"name": named[0], "args": args}, "thoughtSignature": SIGNATURE}
            ]
        else:
            text = "You said: " + user_text
            for sequence in config.get("stopSequences") or ():
                if sequence in text:
                    text = text[: text.index(sequence)]
                    break
            words = text.split(" ")
            limit = config.get("maxOutputTokens")
            if limit is not None and len(words) > limit:
                text, finish = " ".join(words[:limit]), "MAX_TOKENS"
            parts = [{"text": text}]
        output = 12 if "functionCall" in parts[0] else len(parts[0]["text"].split())
        usage = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": output,
            "totalTokenCount": prompt + output,
        }
        if self.cached_tokens:
            usage["cachedContentTokenCount"] = self.cached_tokens
        return parts, finish, usage


def validate_gemini(body: Any) -> str | None:
    """Why Vertex AI would refuse a `generateContent` body (None when it would not)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    unknown = sorted(set(body) - set(GEMINI_KEYS))
    if unknown:
        return f"Invalid JSON payload received. Unknown name {unknown[0]!r}: Cannot find field."
    if not body.get("contents"):
        return "contents is not specified"
    for key, value in body.items():
        try:
            TypeAdapter(GEMINI_KEYS[key]).validate_json(json.dumps(value))
        except ValidationError as err:
            first = err.errors()[0]
            return f"Invalid JSON payload received at '{key}': {first['msg']} at {first['loc']}"
    for content in body["contents"]:
        if content.get("role") not in ("user", "model"):
            return "Please use a valid role: user, model."
        for part in content["parts"]:
            if "functionCall" in part and part.get("thoughtSignature") != SIGNATURE:
                return "Function call is missing a thought_signature in functionCall parts."
    return None


class FakeVertex:
    """The token endpoint and Vertex AI's prediction API, on one loopback port.

    `async with FakeVertex(project="p", location="us-central1") as fake:`; pass
    `fake.token_uri` to :func:`make_service_account`, register the account with
    `fake.trust(account)`, point the registry's `base_url` at `fake.url`.
    """

    def __init__(self, *, project: str, location: str, host: str = "127.0.0.1") -> None:
        self.project = project
        self.location = location
        self.host = host
        self.port = 0
        self.token_lifetime_s = 3600
        self.accounts: dict[str, ServiceAccount] = {}
        self.tokens: dict[str, float] = {}  # access token -> expiry (epoch)
        self.token_requests = 0
        self.rejected_assertions: list[str] = []
        self.requests: list[Recorded] = []
        self.invalid: list[str] = []
        self.queue: deque[GoogleFailure | Failure] = deque()
        self.gemini = GeminiSimulator()
        self.claude = ClaudeResponder(ClaudeSimulator())
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def trust(self, account: ServiceAccount) -> None:
        self.accounts[account.email] = account

    def fail(self, failure: GoogleFailure | Failure, times: int = 1) -> None:
        self.queue.extend([failure] * times)

    def reset(self) -> None:
        self.requests.clear()
        self.invalid.clear()
        self.queue.clear()
        self.gemini.cached_tokens = 0
        self.claude.cache_read = self.claude.cache_write = 0

    async def start(self) -> FakeVertex:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post(
            "/{version:v1|v1beta1}/projects/{project}/locations/{location}/publishers/{publisher}/models/{tail}",
            self._predict,
        )
        self._runner, self.port = await serve_app(app, self.host)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeVertex:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- OAuth 2.0 token endpoint (RFC 7523 JWT bearer grant) ----------------

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        assertion = str(form.get("assertion", ""))
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            account = self.accounts[unverified["iss"]]
            header = jwt.get_unverified_header(assertion)
            if header.get("kid") != account.info["private_key_id"]:
                raise jwt.InvalidTokenError("unknown key id")
            claims = jwt.decode(
                assertion,
                account.public_pem,
                algorithms=["RS256"],
                audience=ASSERTION_AUDIENCE,
                issuer=account.email,
                options={"require": ["iat", "exp", "iss", "aud"]},
            )
            if claims.get("scope") != SCOPE:
                raise jwt.InvalidTokenError("wrong scope")
            if claims["exp"] - claims["iat"] > 3600:
                raise jwt.InvalidTokenError("assertion lives too long")
        except (jwt.InvalidTokenError, KeyError) as err:
            self.rejected_assertions.append(str(err) or type(err).__name__)
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
                status=400,
            )
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + self.token_lifetime_s
        return web.json_response(
            {"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}
        )

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        expiry = self.tokens.get(token)
        return expiry is not None and expiry > time.time()

    # -- prediction ------------------------------------------------------------

    async def _predict(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(
            Recorded(request.path, request.query_string, CIMultiDict(request.headers), body, raw)
        )
        if not self._authorized(request):
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
            )
        info = request.match_info
        if info["project"] != self.project or info["location"] != self.location:
            return google_error(403, "PERMISSION_DENIED", "Permission denied on resource project.")
        match = _MODEL_PATH.match(info["tail"])
        if match is None:
            return google_error(404, "NOT_FOUND", "The requested URL was not found on this server.")
        model, method = match.group("model"), match.group("method")
        publisher = info["publisher"]
        failure = self.queue.popleft() if self.queue else None
        if publisher == "google" and method in ("generateContent", "streamGenerateContent"):
            return await self._gemini(
                request, body, model, method == "streamGenerateContent", failure
            )
        if publisher == "google" and method == "predict":
            # Imported here: the embeddings module builds on this one's error shapes.
            from tests.fake_vertex_embeddings import predict

            return predict(self, body, model, failure)
        if publisher == "anthropic" and model == "count-tokens" and method == "rawPredict":
            return self._count_tokens(body)
        if publisher == "anthropic" and method in ("rawPredict", "streamRawPredict"):
            return await self._claude(request, body, model, method == "streamRawPredict", failure)
        return google_error(
            404, "NOT_FOUND", f"Publisher model {publisher}/{model}:{method} not found."
        )

    @staticmethod
    def _failure_response(failure: GoogleFailure | Failure) -> web.Response:
        if isinstance(failure, Failure):
            return anthropic_error(
                failure.status, failure.error_type, failure.message, **failure.headers
            )
        error: dict[str, Any] = {
            "code": failure.status,
            "message": failure.message,
            "status": failure.google_status,
        }
        if failure.details:
            error["details"] = failure.details
        return web.json_response({"error": error}, status=failure.status, headers=failure.headers)

    async def _gemini(
        self,
        request: web.Request,
        body: Any,
        model: str,
        stream: bool,
        failure: GoogleFailure | Failure | None,
    ) -> web.StreamResponse:
        if stream and request.query.get("alt") != "sse":
            return google_error(400, "INVALID_ARGUMENT", "this fake streams with alt=sse only")
        problem = validate_gemini(body)
        if problem is not None:
            self.invalid.append(problem)
            return google_error(400, "INVALID_ARGUMENT", problem)
        if failure is not None and not (stream and getattr(failure, "in_stream", False)):
            return self._failure_response(failure)
        parts, finish, usage = self.gemini.answer(body, model)
        response_id = f"resp-{next(self._ids)}"
        version = f"{model}-001"
        if not stream:
            answer = {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": parts},
                        "finishReason": finish,
                        "avgLogprobs": -0.1,
                    }
                ],
                "usageMetadata": usage,
                "modelVersion": version,
                "createTime": "2026-11-25T10:00:00.000000Z",
                "responseId": response_id,
            }
            genai.GenerateContentResponse.model_validate_json(json.dumps(answer))
            return web.json_response(answer)
        events: list[dict[str, Any]] = []
        if failure is not None:
            assert isinstance(failure, GoogleFailure)
            events.append(
                {
                    "error": {
                        "code": failure.status,
                        "message": failure.message,
                        "status": failure.google_status,
                    }
                }
            )
        elif "text" in parts[0]:
            words = parts[0]["text"].split(" ")
            for i, word in enumerate(words):
                event: dict[str, Any] = {
                    "candidates": [
                        {
                            "content": {
                                "role": "model",
                                "parts": [{"text": word if i == 0 else " " + word}],
                            }
                        }
                    ],
                    "modelVersion": version,
                    "createTime": "2026-11-25T10:00:00.000000Z",
                    "responseId": response_id,
                }
                events.append(event)
            events[-1]["candidates"][0]["finishReason"] = finish
            events[-1]["usageMetadata"] = usage
        else:
            events.append(
                {
                    "candidates": [
                        {"content": {"role": "model", "parts": parts}, "finishReason": finish}
                    ],
                    "usageMetadata": usage,
                    "modelVersion": version,
                    "createTime": "2026-11-25T10:00:00.000000Z",
                    "responseId": response_id,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            if "error" not in event:
                genai.GenerateContentResponse.model_validate_json(json.dumps(event))
            await response.write(f"data: {json.dumps(event)}\r\n\r\n".encode())
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    def _count_tokens(self, body: Any) -> web.Response:
        """Claude's count-tokens: Anthropic's count_tokens body, the model in it."""
        problem = validate_count_tokens(body)
        if problem is not None:
            self.invalid.append(problem)
            return anthropic_error(400, "invalid_request_error", problem)
        return web.json_response({"input_tokens": count_tokens(body)})

    async def _claude(
        self,
        request: web.Request,
        body: Any,
        model: str,
        stream: bool,
        failure: GoogleFailure | Failure | None,
    ) -> web.StreamResponse:
        if not isinstance(body, dict) or body.get("anthropic_version") not in CLAUDE_VERSIONS:
            problem = "anthropic_version: must be one of " + ", ".join(CLAUDE_VERSIONS)
            self.invalid.append(problem)
            return anthropic_error(400, "invalid_request_error", problem)
        rest = {k: v for k, v in body.items() if k != "anthropic_version"}
        if "model" in rest:
            problem = "model: Extra inputs are not permitted (the model is in the URL)"
            self.invalid.append(problem)
            return anthropic_error(400, "invalid_request_error", problem)
        version = "2023-06-01" if body["anthropic_version"] == "vertex-2023-10-16" else "2026-10-21"
        problem = validate_request(rest, version=version, model_in_body=False)
        if problem is not None:
            self.invalid.append(problem)
            return anthropic_error(400, "invalid_request_error", problem)
        if bool(rest.get("stream")) != stream:
            return anthropic_error(400, "invalid_request_error", "stream must match the method")
        rest["model"] = model
        if failure is not None and not (stream and getattr(failure, "in_stream", False)):
            return self._failure_response(failure)
        if stream:
            claude_failure = failure if isinstance(failure, Failure) else None
            return await write_events(request, self.claude.events(rest, model, claude_failure))
        return web.json_response(self.claude.message(rest, model))

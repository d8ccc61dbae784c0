"""Anthropic's Messages API on Bedrock: `InvokeModel` and
`InvokeModelWithResponseStream` for Claude models, the body passed through.

`POST {endpoint}/model/{modelId}/invoke` (`/invoke-with-response-stream`),
signed with SigV4 as the Converse requests are. The body is the client's
Messages body with Bedrock's differences only: `anthropic_version:
bedrock-2023-05-31` first, `model` removed (it is in the URL), `stream` removed
(the action says it), and the client's `anthropic-beta` header as the body's
`anthropic_beta` list, which is where Bedrock takes it. The answer is
Anthropic's `message`. The stream arrives in AWS event-stream framing: each
`chunk` event carries one Anthropic event as base64 in `bytes`, which goes to
the client as that Anthropic SSE event (:class:`InvokeStream`); exception
messages are classified as ConverseStream's are.

`POST {endpoint}/model/{modelId}/count-tokens` (Bedrock's CountTokens) counts a
Messages body given as the InvokeModel body, base64 in `input.invokeModel.body`.

Which endpoints: a `bedrock` endpoint whose model id names an Anthropic model
(`anthropic.claude-...`, cross-region profiles such as `us.anthropic.claude-...`,
and ARNs that contain them); `messages_api: invoke` (or `converse`, to translate
to Converse instead) in the registry entry decides for model ids that do not
tell (application inference profiles).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from gateway.providers.adapter import MESSAGES, Call, Codec, StreamTranslator, UpstreamRequest
from gateway.providers.anthropic.messages import (
    COUNT_TOKENS,
    MessagesStream,
    betas,
    estimate_message_usage,
    estimate_messages_tokens,
    parse_message,
)
from gateway.providers.bedrock.eventstream import EventStreamDecoder, EventStreamError
from gateway.providers.bedrock.translate import stream_failure
from gateway.providers.chat import bad_response, json_answer, stream_truncated, unsupported
from gateway.providers.failures import AttemptFailed, AttemptFailure
from gateway.providers.usage import Usage
from gateway.providers.wire import encode_body, passthrough_body
from translator.registry import Endpoint

if TYPE_CHECKING:
    from gateway.providers.bedrock.adapter import BedrockAdapter

BEDROCK_ANTHROPIC_VERSION: Final = "bedrock-2023-05-31"
# Claude needs max_tokens; CountTokens validates the body as InvokeModel would.
COUNT_TOKENS_MAX_TOKENS: Final = 1


def serves_messages(endpoint: Endpoint) -> bool:
    """Whether the endpoint's model takes Anthropic's Messages API through InvokeModel."""
    explicit = endpoint.options.get("messages_api")
    if explicit is not None:
        return explicit == "invoke"
    model = (endpoint.model or "").lower()
    return "anthropic.claude" in model or model.startswith("claude")


def invoke_body(call: Call, *, for_count: bool = False) -> dict[str, Any]:
    """The InvokeModel body of a Messages request."""
    first: dict[str, Any] = {"anthropic_version": BEDROCK_ANTHROPIC_VERSION}
    if beta := betas(call):
        first["anthropic_beta"] = beta
    body = passthrough_body(call.body, None, drop=("model", "stream"), first=first)
    if for_count and "max_tokens" not in body:
        body["max_tokens"] = COUNT_TOKENS_MAX_TOKENS
    return body


class InvokeStream(MessagesStream):
    """InvokeModelWithResponseStream's `chunk` events as Anthropic SSE events."""

    def __init__(self, *, prompt_estimate: int, redact: Callable[[str], str]) -> None:
        super().__init__(prompt_estimate=prompt_estimate, redact=redact)
        self._decoder = EventStreamDecoder()

    def feed(self, data: bytes) -> list[bytes]:
        try:
            messages = self._decoder.feed(data)
        except EventStreamError as err:
            raise AttemptFailed(bad_response(f"malformed Bedrock stream: {err}")) from None
        frames: list[bytes] = []
        try:
            for message in messages:
                failure = stream_failure(message, redact=self.redact)
                if failure is not None:
                    raise AttemptFailed(failure)
                if (
                    message.header(":message-type") != "event"
                    or message.header(":event-type") != "chunk"
                ):
                    continue  # other message types are ignored, as AWS SDKs do
                self.event(None, _chunk_bytes(message.payload), frames)
        except AttemptFailed as err:
            err.frames = frames
            raise
        return frames

    def finish(self) -> list[bytes]:
        if self._decoder.pending:
            raise stream_truncated()
        frames: list[bytes] = []
        self.close(frames)
        return frames


def _chunk_bytes(payload: bytes) -> bytes:
    """The Anthropic event a `chunk` carries: `{"bytes": "<base64 JSON>"}`."""
    chunk = json_answer(payload) if payload else {}
    encoded = chunk.get("bytes")
    if not isinstance(encoded, str):
        raise AttemptFailed(bad_response("a Bedrock stream chunk carries no 'bytes'"))
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise AttemptFailed(bad_response("a Bedrock stream chunk is not base64")) from None


class BedrockMessagesCodec(Codec):
    """InvokeModel(-WithResponseStream) with the client's Messages body."""

    operation = MESSAGES

    def __init__(self, adapter: BedrockAdapter) -> None:
        self.adapter = adapter

    def upstream_model(self, call: Call) -> str | None:
        return self.adapter.upstream_model(call.body)

    def _model(self, call: Call) -> str:
        model = self.upstream_model(call)
        if not model:
            raise unsupported("no model: the endpoint names none and the request gives none")
        return model

    async def prepare(self, call: Call) -> UpstreamRequest:
        action = "invoke-with-response-stream" if call.stream else "invoke"
        url = self.adapter.model_url(self._model(call), action)
        return await self.adapter.signed(url, encode_body(invoke_body(call)), stream=call.stream)

    def parse_response(
        self, call: Call, status: int, headers: Mapping[str, str], raw: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        return parse_message(raw, redact=self.adapter.redact)

    def classify_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> AttemptFailure:
        return self.adapter.classify_error(status, headers, raw)

    def stream_translator(self, call: Call) -> StreamTranslator:
        return InvokeStream(
            prompt_estimate=estimate_messages_tokens(call.body), redact=self.adapter.redact
        )

    def estimate_usage(self, call: Call, answer: Mapping[str, Any] | None) -> Usage:
        return estimate_message_usage(call.body, answer)


class BedrockCountTokensCodec(BedrockMessagesCodec):
    """CountTokens with the Messages body as an InvokeModel body."""

    operation = COUNT_TOKENS

    async def prepare(self, call: Call) -> UpstreamRequest:
        url = self.adapter.model_url(self._model(call), "count-tokens")
        body = base64.b64encode(encode_body(invoke_body(call, for_count=True))).decode()
        payload = {"input": {"invokeModel": {"body": body}}}
        return await self.adapter.signed(url, encode_body(payload), stream=False)

    def parse_response(
        self, call: Call, status: int, headers: Mapping[str, str], raw: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        answer = json_answer(raw)
        tokens = answer.get("inputTokens")
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise AttemptFailed(bad_response("Bedrock's token count has no 'inputTokens'"))
        return {"input_tokens": tokens}, Usage(0, 0)

    def stream_translator(self, call: Call) -> StreamTranslator:
        raise AttemptFailed(
            AttemptFailure(400, "invalid_request", "count_tokens cannot be streamed", False)
        )

    def estimate_usage(self, call: Call, answer: Mapping[str, Any] | None) -> Usage:
        return Usage(0, 0)

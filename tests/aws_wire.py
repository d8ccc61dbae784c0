"""AWS wire pieces the fake Bedrock and STS servers share: event-stream
encoding (the gateway only decodes) and SigV4 verification with botocore."""

from __future__ import annotations

import hmac
import json
import re
import struct
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
MAX_CLOCK_SKEW = timedelta(minutes=5)


# ---------------------------------------------------------------------------
# AWS event-stream encoding (the gateway only decodes; this is the server side).


def _header(name: str, value: str) -> bytes:
    raw_name = name.encode()
    raw_value = value.encode()
    return (
        bytes([len(raw_name)]) + raw_name + b"\x07" + struct.pack(">H", len(raw_value)) + raw_value
    )


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers."""
    raw_headers = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + raw_headers + payload
    return message + struct.pack(">I", zlib.crc32(message) & 0xFFFFFFFF)


def event(event_type: str, payload: dict[str, Any]) -> bytes:
    # Bedrock pads event payloads with a `p` field (against length side channels).
    body = {
        **payload,
        "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0"[: 1 + len(event_type)],
    }
    return encode_message(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        json.dumps(body).encode(),
    )


def exception(exception_type: str, message: str) -> bytes:
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps({"message": message}).encode(),
    )


# ---------------------------------------------------------------------------
# SigV4 verification.


def verify_sigv4(
    request: web.Request,
    body: bytes,
    *,
    service: str,
    region: str,
    secrets: dict[str, tuple[str, str | None]],
) -> tuple[str, str] | None:
    """None when the signature is right, else (AWS error type, message)."""
    auth = request.headers.get("Authorization", "")
    match = _AUTH_RE.match(auth)
    if match is None:
        return "MissingAuthenticationTokenException", "Missing Authentication Token"
    key = match["key"]
    if key not in secrets:
        return (
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    secret, token = secrets[key]
    if match["region"] != region or match["service"] != service:
        return "InvalidSignatureException", "Credential should be scoped to a valid region."
    amz_date = request.headers.get("X-Amz-Date", "")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "IncompleteSignatureException", "X-Amz-Date is missing or malformed"
    if abs(datetime.now(UTC) - when) > MAX_CLOCK_SKEW or amz_date[:8] != match["date"]:
        return "InvalidSignatureException", "Signature expired"
    signed = match["signed"].split(";")
    if token is not None and (
        "x-amz-security-token" not in signed or request.headers.get("X-Amz-Security-Token") != token
    ):
        return (
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    headers = {}
    for name in signed:
        if name == "host":
            continue
        if name not in request.headers:
            return "InvalidSignatureException", f"signed header {name} is missing"
        headers[name] = request.headers[name]
    url = f"http://{request.host}{request.raw_path}"
    aws_request = AWSRequest(method=request.method, url=url, data=body, headers=headers)
    aws_request.context["timestamp"] = amz_date
    signer = SigV4Auth(ReadOnlyCredentials(key, secret, token), service, region)
    if signer.signed_headers(signer.headers_to_sign(aws_request)) != match["signed"]:
        return "InvalidSignatureException", "SignedHeaders do not match the request"
    canonical = signer.canonical_request(aws_request)
    expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
    if not hmac.compare_digest(expected, match["signature"]):
        return (
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )
    return None

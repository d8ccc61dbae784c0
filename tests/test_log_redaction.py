"""Client credentials never reach a log line."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from gateway.logs import RedactingFilter, redact_credentials

KEY = "kw_5e073f83a65cb6f7_BvrT1DFHVvLYEQF7KUpyF3P_EkSWvRqIVlEip3G8AwE"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Bearer {KEY}", "Authorization: Bearer <redacted>"),
        (f"key {KEY} used", "key kw_5e073f83a65cb6f7_<redacted> used"),
        ("b'api-key: sk-abc123'", "b'api-key: <redacted>'"),
        ("X-Api-Key: abc and bearer eyJ.x.y", "X-Api-Key: <redacted> and bearer <redacted>"),
        ("nothing secret here", "nothing secret here"),
        ("Authorization:Bearer sk-live-1", "Authorization:Bearer <redacted>"),
        ("bearer: tok_1 and bearer=tok_2", "bearer: <redacted> and bearer=<redacted>"),
        ("Bearer token-abc123", "Bearer <redacted>"),
        ("Bearer tokens.are.here", "Bearer <redacted>"),
        ("Bearer tokenXYZ", "Bearer <redacted>"),
        ("my-api-key:s3cr3t", "my-api-key:<redacted>"),
        # Ordinary text is left as it is.
        (
            "environment variable PRIVATE_GPU_TOKEN (auth.bearer_token_env) is not set",
            "environment variable PRIVATE_GPU_TOKEN (auth.bearer_token_env) is not set",
        ),
        ("the bearer token is missing", "the bearer token is missing"),
        ("send a Bearer credential", "send a Bearer credential"),
        ("a forbearer of news", "a forbearer of news"),
    ],
)
def test_redact_credentials(text: str, expected: str) -> None:
    assert redact_credentials(text) == expected


def _record(msg: str, args: tuple[object, ...], exc: BaseException | None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_protocol_errors_are_summarised_without_their_raw_bytes() -> None:
    exc = BadHttpMessage(f"Missing expected CR after header value: b'Authorization: Bearer {KEY}'")
    record = _record("Error handling request from %s", ("127.0.0.1",), exc)
    assert RedactingFilter().filter(record)
    assert record.getMessage() == (
        "Error handling request from 127.0.0.1: malformed HTTP request (BadHttpMessage 400)"
    )
    assert record.exc_info is None
    assert KEY not in logging.Formatter().format(record)


def test_other_messages_are_scrubbed() -> None:
    record = _record("upstream said %s", (f"bad token Bearer {KEY}",), None)
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "upstream said bad token Bearer <redacted>"


def test_the_unconfigured_endpoint_warning_reads_as_written() -> None:
    """The start-up warning of an endpoint whose credential variable is unset
    (it used to read `(auth.bearer<redacted> is not set`)."""
    from gateway.errors import ProviderConfigError
    from gateway.providers.credentials import CredentialStore
    from translator.errors import Position
    from translator.registry import Endpoint

    endpoint = Endpoint(
        name="private-gpu",
        type="openai-compatible",
        pos=Position("endpoints.yaml", 1, 1),
        auth={"bearer_token_env": "PRIVATE_GPU_TOKEN"},
    )
    with pytest.raises(ProviderConfigError) as caught:
        CredentialStore(endpoint, environ={}).load("bearer_token")
    record = _record("endpoint unavailable: %s", (caught.value,), None)
    record.levelno, record.levelname = logging.WARNING, "WARNING"
    assert RedactingFilter().filter(record)
    assert record.getMessage() == (
        "endpoint unavailable: endpoint 'private-gpu': environment variable "
        "PRIVATE_GPU_TOKEN (auth.bearer_token_env) is not set"
    )

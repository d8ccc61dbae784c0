"""The access log: one line per model request, plain or JSON, that agrees with
the request's audit record and never holds a prompt or a secret."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.access_log import LOGGER, access_fields, plain_line
from gateway.logs import configure_logging
from gateway.settings import SettingsError, load_settings
from observability.audit import AuditRecord
from tests.gateway_harness import ENDPOINT_NAMES, start_gateway, token_of

PROMPT = "the-secret-prompt-canary"


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


@pytest.mark.integration
async def test_one_line_per_model_request_agreeing_with_its_audit_record(
    tmp_path: Path, fake_upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    gw = await start_gateway(tmp_path, fake_upstream)
    messages = [{"role": "user", "content": PROMPT}]
    try:
        sdk = openai.AsyncOpenAI(base_url=gw.base_url, api_key=gw.keys["acme"], max_retries=0)
        gw.clients.append(sdk)
        await sdk.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        stream = await sdk.chat.completions.create(
            model="m",
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            extra_headers={"X-Data-Class": "pii-restricted"},
        )
        async for _ in stream:
            pass
        gw.upstreams["anthropic"].fail(503)
        with pytest.raises(openai.APIStatusError):
            await sdk.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        limited = openai.AsyncOpenAI(
            base_url=gw.base_url, api_key=gw.keys["limited"], max_retries=0
        )
        gw.clients.append(limited)
        with pytest.raises(openai.PermissionDeniedError):
            await limited.chat.completions.create(
                model="m",
                messages=messages,  # type: ignore[arg-type]
                extra_headers={"X-Data-Class": "confidential"},
            )
        records = await gw.audit_records()
    finally:
        await gw.close()
    lines = _access_lines(caplog)
    assert len(lines) == len(records) == 4
    for line, record in zip(lines, records, strict=True):
        assert line.levelno == logging.INFO
        expected = access_fields(AuditRecord(**_record_args(record)))
        assert line.getMessage() == plain_line(expected)
        assert line.kamiwaza_fields == expected  # type: ignore[attr-defined]
    first, streamed, failed, refused = (line.kamiwaza_fields for line in lines)  # type: ignore[attr-defined]
    assert {k: first[k] for k in ("tenant", "operation", "rule", "endpoint", "status")} == {
        "tenant": "enterprise-acme",
        "operation": "chat",
        "rule": "default",
        "endpoint": "anthropic",
        "status": 200,
    }
    assert first["tokens_in"] > 0 and first["tokens_out"] > 0
    assert (streamed["stream"], streamed["endpoint"], streamed["rule"]) == (
        True,
        "private-gpu",
        "pii-on-prem",
    )
    assert streamed["ttft_ms"] is not None
    assert (failed["status"], failed["error"], failed["attempts"]) == (
        502,
        "upstream_unavailable",
        1,
    )
    assert (refused["status"], refused["endpoint"], refused["rule"]) == (403, "none", "none")
    text = "\n".join(line.getMessage() for line in lines)
    for secret in (PROMPT, *gw.keys.values(), *(token_of(n) for n in ENDPOINT_NAMES)):
        assert secret not in text
        assert secret not in json.dumps([line.kamiwaza_fields for line in lines])  # type: ignore[attr-defined]


def _record_args(doc: dict[str, Any]) -> dict[str, Any]:
    from observability.audit import Attempt

    return {**doc, "attempts": [Attempt(**a) for a in doc["attempts"]]}


def test_plain_and_json_formats() -> None:
    record = AuditRecord(
        request_id="req-1",
        timestamp="2025-06-01T10:00:00.000Z",
        path="/v1/route",
        operation="chat",
        status=200,
        tenant="acme",
        data_class="internal",
        rule={"index": 0, "name": "cheap and fast", "source": "p.yaml:3"},
        endpoint="private-gpu",
        model="llama",
    )
    record.latency_ms["total"] = 12.5
    record.tokens = {"input": 3, "output": 7}
    fields = access_fields(record)
    assert plain_line(fields) == (
        'req-1 tenant=acme operation=chat data_class=internal rule="cheap and fast" '
        "endpoint=private-gpu model=llama status=200 stream=false latency_ms=12.5 ttft_ms=- "
        "tokens_in=3 tokens_out=7"
    )
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    try:
        configure_logging("info", "json", stream=out)
        from gateway.access_log import AccessLog

        AccessLog().observe(record)
        logging.getLogger("kamiwaza.gateway").warning("upstream said Bearer sk-live-123")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    access, warning = (json.loads(line) for line in out.getvalue().splitlines())
    assert access.pop("time").endswith("Z")
    assert access == {
        "level": "info",
        "logger": "kamiwaza.access",
        "message": plain_line(fields),
        **fields,
    }
    assert warning["message"] == "upstream said Bearer <redacted>"
    assert warning["level"] == "warning"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("log_format", "xml", "KAMIWAZA_LOG_FORMAT: expected one of plain, json, got 'xml'"),
        (
            "log_level",
            "loud",
            "KAMIWAZA_LOG_LEVEL: expected one of debug, info, warning, error, got 'loud'",
        ),
    ],
)
def test_log_settings_are_checked(key: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ={f"KAMIWAZA_{key.upper()}": value})
    assert str(info.value) == message
    settings = load_settings(environ={"KAMIWAZA_LOG_FORMAT": "JSON", "KAMIWAZA_LOG_LEVEL": "Debug"})
    assert (settings.log_format, settings.log_level) == ("json", "debug")

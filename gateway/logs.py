"""Logging: the format (`log_format`: plain text or JSON lines), the level
(`log_level`), and the filter that keeps credentials out of every line."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Final

from aiohttp.http_exceptions import HttpProcessingError

# Credentials as they can appear in text: our API keys, bearer tokens, api-key
# headers. "bearer" must be a word of its own followed by a separator, so that
# ordinary text such as `auth.bearer_token_env` is left alone; the words after it
# that plainly are prose ("the bearer token is missing") are never a credential.
# A token runs to whitespace or a quote; a backslash escape inside it (`\/`,
# `\u002f` in JSON-quoted text) is part of the token, not its end, but an
# escaped quote (`\"`) ends it.
_PROSE_AFTER_BEARER = r"(?:tokens?|credentials?|auth|authentication|header|scheme)"
_CREDENTIAL_RE = re.compile(
    r"(kw_[0-9a-f]+_)[A-Za-z0-9_-]+"
    r"|((?<![A-Za-z])bearer(?:\s*[:=]\s*|\s+)|(?:x-)?api-key:\s*)"
    rf"(?!{_PROSE_AFTER_BEARER}(?![A-Za-z0-9._~+/=-]))(?:[^\s'\"\\]|\\[^\s'\"])+",
    re.IGNORECASE,
)


def redact_credentials(text: str) -> str:
    lowered = text.lower()
    # Most lines hold none of the markers: skip the regex's scan of every position.
    if "kw_" not in lowered and "bearer" not in lowered and "api-key" not in lowered:
        return text
    return _CREDENTIAL_RE.sub(lambda m: (m.group(1) or m.group(2)) + "<redacted>", text)


class RedactingFilter(logging.Filter):
    """Keeps client credentials out of every log line.

    aiohttp logs a malformed request with the raw bytes of its headers, the
    client's Authorization header included; that record is reduced to a
    one-line summary, and any other message is scrubbed as a last resort.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            summary = (record.getMessage(), type(exc).__name__, exc.code)
            record.msg, record.args = "%s: malformed HTTP request (%s %s)", summary
            record.exc_info = None
            record.exc_text = None
            return True
        message = record.getMessage()
        cleaned = redact_credentials(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("plain", "json")
PLAIN_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A record's structured fields (the access log's) ride in this attribute.
FIELDS_ATTR: Final = "kamiwaza_fields"
# The worker of `serve --workers` that logged a record (set by tag_worker).
WORKER_ATTR: Final = "kamiwaza_worker"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's
    structured fields (e.g. the access log's) at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        worker = getattr(record, WORKER_ATTR, None)
        if worker is not None:
            doc["worker"] = worker
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"), default=str)


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(PLAIN_FORMAT)


def configure_logging(level: str, fmt: str = "plain", stream: IO[str] | None = None) -> None:
    """The root logger's one handler (stderr unless `stream`), in `fmt`, at `level`."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # aiohttp's access log would be a second, unaudited record of every request;
    # the gateway writes its own (gateway.access_log).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class _WorkerFilter(logging.Filter):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.worker = name

    def filter(self, record: logging.LogRecord) -> bool:
        setattr(record, WORKER_ATTR, self.worker)
        return True


def tag_worker(name: str) -> None:
    """Mark every line this process logs with its worker's name (`serve
    --workers`): `[w1]` before the logger in plain text, `"worker"` in JSON."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerFilter(name))
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(
                logging.Formatter(PLAIN_FORMAT.replace("%(name)s", f"[{name}] %(name)s"))
            )

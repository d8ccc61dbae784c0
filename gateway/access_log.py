"""The access log: one line per model request, from its finished audit record.

A record observer (see `OBSERVERS` in :mod:`gateway.state`): each line names
the request id, tenant, operation, data class, rule, endpoint, model, status,
latency (total and time to first token), tokens and, for a failed request, its
error code and how many endpoints were tried. It never holds a prompt, a
completion, an error's text (which can quote the upstream) or a credential:
every value comes from configuration (keys file, registry, policy) or is a
number or a short code.

Lines go to the `kamiwaza.access` logger at INFO, so `log_level: warning` turns
them off; `log_format: json` makes each one a JSON object with these fields
(:class:`gateway.logs.JsonFormatter`), plain text is `key=value` pairs.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from gateway.logs import FIELDS_ATTR
from observability.audit import AuditRecord
from observability.metrics import label, rule_label

LOGGER = "kamiwaza.access"
_NEEDS_QUOTES = re.compile(r'[\s"]')


def access_fields(record: AuditRecord) -> dict[str, Any]:
    """What one access-log line says about a request."""
    latency = record.latency_ms
    fields: dict[str, Any] = {
        "request_id": record.request_id,
        "tenant": label(record.tenant),
        "operation": label(record.operation),
        "data_class": label(record.data_class),
        "rule": rule_label(record.rule, record.overridden_by),
        "endpoint": label(record.endpoint),
        "model": label(record.model),
        "status": record.status,
        "stream": record.stream,
        "latency_ms": latency.get("total"),
        "ttft_ms": latency.get("ttft"),
        "tokens_in": record.tokens.get("input", 0),
        "tokens_out": record.tokens.get("output", 0),
    }
    if record.error is not None:
        fields["error"] = record.error.get("code")
    if len(record.attempts) > 1 or record.error is not None:
        fields["attempts"] = len(record.attempts)
    return fields


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    # Names come from configuration; quote one that a space would split.
    return json.dumps(text) if not text or _NEEDS_QUOTES.search(text) else text


def plain_line(fields: dict[str, Any]) -> str:
    rest = " ".join(
        f"{key}={_plain(value)}" for key, value in fields.items() if key != "request_id"
    )
    return f"{fields['request_id']} {rest}"


class AccessLog:
    """The observer; `observe` is called with every finished request's record."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(LOGGER)

    def observe(self, record: AuditRecord) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        try:
            fields = access_fields(record)
            self.logger.info(plain_line(fields), extra={FIELDS_ATTR: fields})
        except Exception:  # an observer never fails a request
            self.logger.exception("access log: cannot log request %s", record.request_id)

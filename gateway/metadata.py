"""Request metadata: what the caller declares about a request, validated, and the
OPA input document built from it and the verified identity.

Metadata comes from headers (`X-Data-Class`, `X-Latency-Budget-Ms`,
`X-Cost-Cap-Per-1k`, `X-Labels`) or from a `kamiwaza` object in the JSON body
(`extra_body={"kamiwaza": {...}}` with the OpenAI SDK), never both with
different values. Identity fields come only from the credential.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.auth import Identity
from gateway.errors import BadRequestError, PermissionDeniedError
from gateway.settings import Settings

BODY_FIELD = "kamiwaza"
MAX_LABELS = 32
MAX_LABEL_LENGTH = 128

_HEADERS = {
    "data_class": "X-Data-Class",
    "latency_budget_ms": "X-Latency-Budget-Ms",
    "cost_cap_per_1k": "X-Cost-Cap-Per-1k",
    "labels": "X-Labels",
}


@dataclass(frozen=True, slots=True)
class RequestMetadata:
    data_class: str
    latency_budget_ms: float | None = None
    cost_cap_per_1k: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def _number(raw: Any, where: str, *, positive: bool) -> float:
    if isinstance(raw, bool):
        raise BadRequestError(
            f"{where} must be a number, got {json.dumps(raw)}", code="bad_metadata"
        )
    try:
        value = float(raw)
    except OverflowError:
        raise BadRequestError(f"{where} is too large", code="bad_metadata") from None
    except (TypeError, ValueError):
        shown = repr(raw) if isinstance(raw, str) else json.dumps(raw)
        raise BadRequestError(
            f"{where} must be a number, got {shown}", code="bad_metadata"
        ) from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise BadRequestError(
            f"{where} must be a {'positive' if positive else 'non-negative'} finite number",
            code="bad_metadata",
        )
    return int(value) if value.is_integer() else value


def _labels(raw: Any, where: str) -> dict[str, str]:
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("{"):
            try:
                raw = json.loads(text)
            except json.JSONDecodeError:
                raise BadRequestError(f"{where} is not valid JSON", code="bad_metadata") from None
        else:
            pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise BadRequestError(
                    f"{where} must be key=value pairs separated by commas, or a JSON object",
                    code="bad_metadata",
                )
            raw = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(raw, dict):
        raise BadRequestError(f"{where} must be an object of string labels", code="bad_metadata")
    if len(raw) > MAX_LABELS:
        raise BadRequestError(f"{where}: at most {MAX_LABELS} labels", code="bad_metadata")
    labels: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise BadRequestError(
                f"{where}: label keys and values must be strings", code="bad_metadata"
            )
        if len(key) > MAX_LABEL_LENGTH or len(value) > MAX_LABEL_LENGTH:
            raise BadRequestError(
                f"{where}: labels are limited to {MAX_LABEL_LENGTH} characters",
                code="bad_metadata",
            )
        labels[key] = value
    return labels


def _declared(headers: Mapping[str, str], body: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """Each declared field with where it came from; a conflict between the two is a 400."""
    section = body.get(BODY_FIELD)
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise BadRequestError(f"'{BODY_FIELD}' must be an object", code="bad_metadata")
    unknown = sorted(section.keys() - _HEADERS.keys())
    if unknown:
        raise BadRequestError(
            f"unknown field(s) in '{BODY_FIELD}': {', '.join(unknown)} "
            f"(known: {', '.join(_HEADERS)})",
            code="bad_metadata",
        )
    out: dict[str, tuple[Any, str]] = {}
    for name, header in _HEADERS.items():
        from_header = headers.get(header)
        from_body = section.get(name)
        if from_header is not None and from_body is not None:
            raise BadRequestError(
                f"{name} is given both in the {header} header and in '{BODY_FIELD}'; give it once",
                code="bad_metadata",
            )
        if from_header is not None:
            out[name] = (from_header, f"header {header}")
        elif from_body is not None:
            out[name] = (from_body, f"{BODY_FIELD}.{name}")
    return out


def resolve_metadata(
    identity: Identity, headers: Mapping[str, str], body: Mapping[str, Any], settings: Settings
) -> RequestMetadata:
    """Validate the declared metadata and work out the effective data class.

    The effective class is the highest of the declared one (or the key's default)
    and the tenant's floor: a client can raise it, never lower it.
    """
    declared = _declared(headers, body)
    classes = settings.data_classes
    if "data_class" in declared:
        raw, where = declared["data_class"]
        if not isinstance(raw, str) or raw.strip() not in classes:
            raise BadRequestError(
                f"{where}: unknown data class {raw!r}; known: {', '.join(classes)}",
                code="bad_metadata",
            )
        claimed = raw.strip()
    else:
        claimed = identity.default_data_class or settings.default_data_class
        if claimed not in classes:
            claimed = settings.default_data_class
    effective = claimed
    floor = settings.tenant_floors.get(identity.tenant)
    if floor is not None and settings.data_class_rank(floor) > settings.data_class_rank(effective):
        effective = floor
    if not identity.allows_data_class(effective):
        raise PermissionDeniedError(
            f"tenant {identity.tenant!r} may not send {effective!r} data with this credential "
            f"(allowed: {', '.join(identity.allowed_data_classes or ()) or 'none'})",
            code="data_class_not_allowed",
        )
    latency = cost = None
    if "latency_budget_ms" in declared:
        latency = _number(*declared["latency_budget_ms"], positive=True)
    if "cost_cap_per_1k" in declared:
        cost = _number(*declared["cost_cap_per_1k"], positive=False)
    labels = _labels(*declared["labels"]) if "labels" in declared else {}
    return RequestMetadata(effective, latency, cost, labels)


def opa_input(
    identity: Identity,
    meta: RequestMetadata,
    *,
    operation: str,
    model: str | None,
    request_id: str,
    path: str,
    stream: bool,
) -> dict[str, Any]:
    """The input document (docs/design.md, "Decision"). Absent fields are left out, never null;
    prompt text never enters it (OPA's decision log stores the whole input)."""
    user: dict[str, Any] = {"roles": list(identity.roles)}
    if identity.user is not None:
        user["id"] = identity.user
    doc: dict[str, Any] = {
        "tenant": identity.tenant,
        "user": user,
        "data_class": meta.data_class,
        "operation": operation,
        "request": {"id": request_id, "path": path, "stream": stream},
    }
    if meta.latency_budget_ms is not None:
        doc["latency_budget_ms"] = meta.latency_budget_ms
    if meta.cost_cap_per_1k is not None:
        doc["cost_cap_per_1k"] = meta.cost_cap_per_1k
    if model is not None:
        doc["model"] = model
    if meta.labels:
        doc["labels"] = dict(meta.labels)
    return doc

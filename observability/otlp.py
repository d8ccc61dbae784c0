"""Where an OTLP/HTTP signal goes: the standard OTEL_* variables merged with ours.

Metrics and traces read the same variables, each with its own signal-specific
names (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, `OTEL_TRACES_EXPORTER`, ...); this
module is the one reading of them. When a signal is on is the caller's rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

DEFAULT_OTLP_ENDPOINT = "http://localhost:4318"


@dataclass(frozen=True, slots=True)
class OtlpEnv:
    """The OTEL_* variables of one signal ("METRICS" or "TRACES")."""

    signal: str
    sdk_disabled: bool  # OTEL_SDK_DISABLED=true
    exporter: str  # OTEL_<SIGNAL>_EXPORTER, lower case ("" when unset)
    signal_url: str  # OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT, used as is
    base_url: str  # OTEL_EXPORTER_OTLP_ENDPOINT, the signal's path appended
    headers: str  # OTEL_EXPORTER_OTLP_<SIGNAL>_HEADERS, else OTEL_EXPORTER_OTLP_HEADERS
    protocol: str  # OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL


def read_otlp_env(env: Mapping[str, str], signal: str) -> OtlpEnv:
    def get(name: str) -> str:
        return (env.get(name) or "").strip()

    return OtlpEnv(
        signal=signal,
        sdk_disabled=get("OTEL_SDK_DISABLED").lower() == "true",
        exporter=get(f"OTEL_{signal}_EXPORTER").lower(),
        signal_url=get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"),
        base_url=get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        headers=get(f"OTEL_EXPORTER_OTLP_{signal}_HEADERS") or get("OTEL_EXPORTER_OTLP_HEADERS"),
        protocol=get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or get("OTEL_EXPORTER_OTLP_PROTOCOL"),
    )


def otlp_target(
    otlp: OtlpEnv, path: str, endpoint: str | None, headers: Mapping[str, str]
) -> tuple[str, Mapping[str, str]]:
    """URL and headers for the signal; ValueError when the protocol is not OTLP/HTTP.

    The URL is ours (a base URL, `path` appended unless present), else the
    signal's own endpoint variable (as is), else the generic one (+ `path`), else
    localhost:4318. Our headers overlay the variables'.
    """
    from opentelemetry.util.re import parse_env_headers

    if otlp.protocol and otlp.protocol != "http/protobuf":
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={otlp.protocol!r}: the gateway exports "
            f"{otlp.signal.lower()} over OTLP/HTTP only; use 'http/protobuf' (port 4318 on a "
            "collector)"
        )

    def with_path(base: str) -> str:
        base = base.rstrip("/")
        return base if base.endswith(path) else base + path

    if endpoint:
        url = with_path(endpoint)
    elif otlp.signal_url:
        url = otlp.signal_url
    else:
        url = with_path(otlp.base_url or DEFAULT_OTLP_ENDPOINT)
    merged = {**parse_env_headers(otlp.headers, liberal=True), **headers}
    return url, MappingProxyType(merged)

"""Gateway configuration, parsed once into frozen settings.

Sources, later ones winning: built-in defaults (which run the example policy),
a YAML config file (`--config` or `KAMIWAZA_CONFIG`), environment variables
(`KAMIWAZA_<KEY>` in upper case, e.g. `KAMIWAZA_OPA_TIMEOUT_MS`), and command
line flags. A missing or malformed value fails at startup with a
:class:`SettingsError` naming the key or variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import yaml

from gateway.auth.identity import AuthConfigError
from gateway.auth.jwt_verifier import JwtSettings
from gateway.errors import ConfigError
from translator.classes import DEFAULT_DATA_CLASSES, classes_data

ENV_PREFIX = "KAMIWAZA_"


class SettingsError(ConfigError):
    """A configuration value is missing or invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    policy: str = "policies/routing.yaml"
    endpoints: str | None = None  # default: endpoints.yaml beside the policy
    keys: str = "keys.json"
    audit_dir: str = "audit"
    # Audit pipeline (observability/pipeline.py; README "Audit"): spool, sink, bounds.
    audit_sink: str = "local"  # local | s3 | gcs | http
    audit_prefix: str = "records"  # object keys: <prefix>/dt=YYYY-MM-DD/hour=HH/...
    audit_host: str | None = None  # the stream's name in keys; default: the host name
    audit_spool_dir: str | None = None  # default: <audit_dir>/spool
    audit_spool_max_bytes: int = 1 << 30
    audit_spool_full: str = "refuse"  # refuse (503) | drop (counted, logged, gap entry)
    audit_fsync_interval_ms: int = 200
    audit_batch_interval_s: float = 10.0
    audit_batch_max_bytes: int = 8 << 20
    audit_retry_max_s: float = 30.0
    audit_local_max_file_bytes: int = 32 << 20
    audit_s3_bucket: str | None = None
    audit_s3_region: str | None = None
    audit_s3_kms_key_id: str | None = None
    audit_s3_endpoint_url: str | None = None
    audit_gcs_bucket: str | None = None
    audit_gcs_project: str | None = None
    audit_gcs_endpoint_url: str | None = None
    audit_http_url: str | None = None
    audit_http_token_env: str = "KAMIWAZA_AUDIT_HTTP_TOKEN"
    audit_http_ca_file: str | None = None
    audit_prompt_salt_env: str | None = None  # variable holding the prompt-hash salt
    audit_decision_logs: bool = True  # OPA decision log -> loopback ingestion
    # For an OPA that runs apart (the Helm chart's sidecar container): a fixed
    # ingestion port (0: any) and a file to write the ingestion token to.
    audit_decision_logs_port: int = 0
    audit_decision_logs_token_file: str | None = None
    rego_dir: str = "rego"
    # Override directories loaded beside rego_dir (e.g. the shipped example,
    # policies/examples/overrides): none by default, an operator opts in.
    overrides_dirs: tuple[str, ...] = ()
    # A candidate policy decided beside the live one on every request, in the
    # same OPA query, never routing; disagreements go to audit and metrics.
    shadow_policy: str | None = None
    # None: start and supervise an OPA sidecar on loopback.
    opa_url: str | None = None
    opa_bin: str | None = None
    opa_timeout_ms: int = 250
    # Go runtime of the sidecar (0: Go's default, or GOMAXPROCS/GOGC inherited
    # from the environment). One P stops Go's idle threads spinning on every
    # wake-up, and a larger GC target keeps collections out of most requests:
    # both cut OPA's CPU per decision and the gateway's p99 (README "Benchmarks").
    opa_gomaxprocs: int = 1
    opa_gogc: int = 400
    # Where the sidecar's policy comes from (README "Policy rollout"): `files`,
    # compiled here at start-up (again on SIGHUP, or when policy_watch_s polls a
    # change), or `bundle`, an OPA bundle the sidecar polls from bundle_url
    # (gateway/policy_source.py turns the bundle_* settings into OPA's config).
    policy_source: str = "files"  # files | bundle
    policy_watch_s: float = 0.0  # files: poll the policy and registry this often; 0: off
    bundle_url: str | None = None  # s3://bucket/key, gs://bucket/key or https://host/path
    bundle_credentials: str | None = None  # None: the scheme's default (policy_source.py)
    bundle_token_file: str | None = None  # bearer token file (credentials token_file)
    bundle_region: str | None = None  # S3 region (OPA signs with it)
    bundle_endpoint_url: str | None = None  # S3-compatible store or GCS emulator
    bundle_poll_min_s: int = 10
    bundle_poll_max_s: int = 30
    bundle_persist: bool = True  # the last activated bundle survives an OPA restart
    bundle_persist_dir: str | None = None  # None: <audit_dir>/opa (own sidecar)
    bundle_verification_key: str | None = None  # PEM public key file: signatures required
    bundle_signing_alg: str = "RS256"
    # Worker processes serving one port (gateway/workers.py; README "Workers"):
    # `auto` in the config is the number of CPUs.
    workers: int = 1
    # SIGTERM: in-flight requests and streams get this long to finish.
    drain_timeout_s: float = 30.0
    max_body_bytes: int = 4 * 1024 * 1024
    # Slow and idle clients, and the connection cap (gateway/server.py; README
    # "Reliability"). 0 turns a timeout off.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 75.0
    max_connections: int = 4096
    data_classes: tuple[str, ...] = DEFAULT_DATA_CLASSES
    # Classes whose requests may only reach `in_vpc: true` endpoints (the in-VPC
    # guard). None: the highest of data_classes.
    in_vpc_data_classes: tuple[str, ...] | None = None
    default_data_class: str = "internal"
    # The lowest data class each tenant's requests may carry.
    tenant_floors: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    # Endpoint health from this replica's own traffic (gateway/health; README
    # "Endpoint health"): the rolling window, how long a lagging endpoint is held
    # before it is judged again, the share of requests that may probe it then,
    # and how often self-hosted servers' `metrics_url` is scraped.
    health: bool = True
    health_window_s: float = 60.0
    health_cooldown_s: float = 30.0
    health_probe_share: float = 0.05
    health_scrape_interval_s: float = 10.0
    jwt: JwtSettings | None = None
    log_level: str = "info"  # debug | info | warning | error (warning: no access log)
    log_format: str = "plain"  # plain | json (one JSON object per line)
    # Start even when an endpoint's credential is missing (routes to it fail
    # over); off by default so that a typo in a variable name stops startup.
    allow_unconfigured_endpoints: bool = False
    # Metrics over OTLP/HTTP; the standard OTEL_* variables apply too (README,
    # "Metrics and dashboards"). None: on when an OTLP endpoint is configured.
    metrics: bool | None = None
    otlp_endpoint: str | None = None  # base URL, e.g. http://otel-collector:4318
    otlp_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    metrics_interval_s: float | None = None  # None: OTEL_METRIC_EXPORT_INTERVAL, else 60
    # Traces to the same OTLP endpoint (/v1/traces). None: as `metrics`.
    traces: bool | None = None
    # Per-tenant rate limits and budgets (gateway/limits; README "Budgets and rate
    # limits"). None: no limits. Without a Redis URL the counters are in-process:
    # one replica only.
    limits: str | None = None
    limits_redis_url: str | None = None
    limits_redis_cluster: bool = False
    limits_redis_password_env: str | None = None
    limits_redis_timeout_ms: int = 250
    limits_fail_mode: str = "closed"  # closed (503) | open (logged, counted)
    # The embedded console (GET /console, gateway/console/): off, loopback
    # clients only, or any client; always for credentials with the admin role.
    console: str = "loopback"  # off | loopback | any
    console_admin_role: str = "admin"
    # Where `make setup` put the console's chart library (npm ci); None: the
    # node_modules/ of the checkout, else of the working directory.
    console_assets_dir: str | None = None

    def data_class_rank(self, name: str) -> int:
        return self.data_classes.index(name)

    def classes_data(self) -> dict[str, Any]:
        """`data.kamiwaza.classes` for OPA (translator.classes)."""
        return classes_data(self.data_classes, self.in_vpc_data_classes)


def _share(value: Any, where: str) -> float:
    number = _float(value, where)
    if not 0 < number <= 1:
        raise SettingsError(f"{where}: must be a share above 0 and at most 1, got {number}")
    return number


def _int(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise SettingsError(f"{where}: expected an integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{where}: expected an integer, got {value!r}") from None
    if number < minimum:
        raise SettingsError(f"{where}: must be at least {minimum}, got {number}")
    return number


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise SettingsError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{where}: expected a number, got {value!r}") from None
    if number < 0:
        raise SettingsError(f"{where}: must not be negative, got {number:g}")
    return number


def _positive(value: Any, where: str) -> float:
    number = _float(value, where)
    if number == 0:
        raise SettingsError(f"{where}: must be positive, got 0")
    return number


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{where}: expected true or false, got {value!r}")


def _workers(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        return _int(value, where, minimum=1)
    except SettingsError:
        raise SettingsError(
            f"{where}: expected a number of workers or auto, got {value!r}"
        ) from None


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    return None if value in (None, "") else _str(value, where)


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    text = _str(value, where).strip().lower()
    if text not in choices:
        raise SettingsError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return text


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise SettingsError(f"{where}: expected a non-empty list, got {value!r}")
    return tuple(_str(item, where).strip() for item in items)


def _opt_str_list(value: Any, where: str) -> tuple[str, ...]:
    if value in (None, "", []):
        return ()
    return _str_list(value, where)


def _str_map(value: Any, where: str) -> Mapping[str, str]:
    if isinstance(value, str):  # env form: "acme=confidential,globex=internal"
        pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise SettingsError(f"{where}: expected key=value pairs, got {value!r}")
        value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict):
        raise SettingsError(f"{where}: expected a mapping, got {value!r}")
    return MappingProxyType({_str(k, where): _str(v, f"{where}.{k}") for k, v in value.items()})


def _jwt(value: Any, where: str) -> JwtSettings | None:
    if value in (None, {}):
        return None
    if not isinstance(value, dict):
        raise SettingsError(f"{where}: expected a mapping, got {value!r}")
    known = {f.name: f for f in fields(JwtSettings)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, raw in value.items():
        sub = f"{where}.{key}"
        if key == "algorithms" or (key == "audience" and isinstance(raw, list)):
            kwargs[key] = _str_list(raw, sub)
        elif key.endswith("_s"):
            kwargs[key] = _float(raw, sub)
        else:
            kwargs[key] = _opt_str(raw, sub)
    for required in ("issuer", "audience"):
        if required not in kwargs:
            raise SettingsError(f"{where}.{required}: required when jwt is configured")
    try:
        return JwtSettings(**kwargs)
    except AuthConfigError as err:
        raise SettingsError(f"{where}: {err}") from err


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "host": _str,
    "port": lambda v, w: _int(v, w, minimum=0),
    "policy": _str,
    "endpoints": _opt_str,
    "keys": _str,
    "audit_dir": _str,
    "audit_sink": lambda v, w: _choice(v, w, ("local", "s3", "gcs", "http")),
    "audit_prefix": lambda v, w: "" if v in (None, "") else _str(v, w).strip("/"),
    "audit_host": _opt_str,
    "audit_spool_dir": _opt_str,
    "audit_spool_max_bytes": lambda v, w: _int(v, w, minimum=64 * 1024),
    "audit_spool_full": lambda v, w: _choice(v, w, ("refuse", "drop")),
    "audit_fsync_interval_ms": lambda v, w: _int(v, w, minimum=1),
    "audit_batch_interval_s": _positive,
    "audit_batch_max_bytes": lambda v, w: _int(v, w, minimum=4096),
    "audit_retry_max_s": _float,
    "audit_local_max_file_bytes": lambda v, w: _int(v, w, minimum=4096),
    "audit_s3_bucket": _opt_str,
    "audit_s3_region": _opt_str,
    "audit_s3_kms_key_id": _opt_str,
    "audit_s3_endpoint_url": _opt_str,
    "audit_gcs_bucket": _opt_str,
    "audit_gcs_project": _opt_str,
    "audit_gcs_endpoint_url": _opt_str,
    "audit_http_url": _opt_str,
    "audit_http_token_env": _str,
    "audit_http_ca_file": _opt_str,
    "audit_prompt_salt_env": _opt_str,
    "audit_decision_logs": _bool,
    "audit_decision_logs_port": lambda v, w: _int(v, w, minimum=0),
    "audit_decision_logs_token_file": _opt_str,
    "rego_dir": _str,
    "overrides_dirs": _opt_str_list,
    "shadow_policy": _opt_str,
    "opa_url": _opt_str,
    "opa_bin": _opt_str,
    "opa_timeout_ms": lambda v, w: _int(v, w, minimum=1),
    "opa_gomaxprocs": lambda v, w: _int(v, w, minimum=0),
    "opa_gogc": lambda v, w: _int(v, w, minimum=0),
    "policy_source": lambda v, w: _choice(v, w, ("files", "bundle")),
    "policy_watch_s": _float,
    "bundle_url": _opt_str,
    "bundle_credentials": _opt_str,
    "bundle_token_file": _opt_str,
    "bundle_region": _opt_str,
    "bundle_endpoint_url": _opt_str,
    "bundle_poll_min_s": lambda v, w: _int(v, w, minimum=1),
    "bundle_poll_max_s": lambda v, w: _int(v, w, minimum=1),
    "bundle_persist": _bool,
    "bundle_persist_dir": _opt_str,
    "bundle_verification_key": _opt_str,
    "bundle_signing_alg": _str,
    "workers": _workers,
    "drain_timeout_s": _float,
    "max_body_bytes": lambda v, w: _int(v, w, minimum=1024),
    "header_timeout_s": _float,
    "body_timeout_s": _float,
    "keepalive_timeout_s": _float,
    "max_connections": lambda v, w: _int(v, w, minimum=1),
    "data_classes": _str_list,
    "in_vpc_data_classes": lambda v, w: None if v in (None, "") else _str_list(v, w),
    "default_data_class": _str,
    "tenant_floors": _str_map,
    "breaker_failures": lambda v, w: _int(v, w, minimum=1),
    "breaker_cooldown_s": _float,
    "health": _bool,
    "health_window_s": _positive,
    "health_cooldown_s": _float,
    "health_probe_share": _share,
    "health_scrape_interval_s": _positive,
    "jwt": _jwt,
    "log_level": lambda v, w: _choice(v, w, ("debug", "info", "warning", "error")),
    "log_format": lambda v, w: _choice(v, w, ("plain", "json")),
    "allow_unconfigured_endpoints": _bool,
    "metrics": lambda v, w: None if v in (None, "") else _bool(v, w),
    "otlp_endpoint": _opt_str,
    "otlp_headers": _str_map,
    "metrics_interval_s": lambda v, w: None if v in (None, "") else _positive(v, w),
    "traces": lambda v, w: None if v in (None, "") else _bool(v, w),
    "limits": _opt_str,
    "limits_redis_url": _opt_str,
    "limits_redis_cluster": _bool,
    "limits_redis_password_env": _opt_str,
    "limits_redis_timeout_ms": lambda v, w: _int(v, w, minimum=1),
    "limits_fail_mode": lambda v, w: _choice(v, w, ("closed", "open")),
    "console": lambda v, w: _choice(v, w, ("off", "loopback", "any")),
    "console_admin_role": _str,
    "console_assets_dir": _opt_str,
}


def load_settings(
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, config file, environment and overrides; validate everything."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = config_file or env.get(f"{ENV_PREFIX}CONFIG") or None
    if config_file:
        values.update(_read_config(config_file))
    for key, parser in _PARSERS.items():
        raw = env.get(ENV_PREFIX + key.upper())
        if raw is not None and key != "jwt":  # JWT settings are structured: config file only
            values[key] = (parser, raw, ENV_PREFIX + key.upper())
    for key, raw in (overrides or {}).items():
        if raw is not None:
            if key not in _PARSERS:
                raise SettingsError(f"unknown setting {key!r}")
            values[key] = (_PARSERS[key], raw, f"--{key.replace('_', '-')}")
    parsed: dict[str, Any] = {}
    for key, entry in values.items():
        parser, raw, where = entry
        parsed[key] = parser(raw, where)
    settings = Settings(**parsed)
    _cross_check(settings)
    return settings


def _read_config(path: str) -> dict[str, tuple[Callable[[Any, str], Any], Any, str]]:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as err:
        raise SettingsError(f"config file {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise SettingsError(f"config file {path}: invalid YAML: {err}") from err
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SettingsError(f"config file {path}: expected a mapping of settings")
    out = {}
    for key, raw in doc.items():
        if key not in _PARSERS:
            raise SettingsError(f"config file {path}: unknown setting {key!r}")
        out[key] = (_PARSERS[key], raw, f"{path}: {key}")
    return out


def _cross_check(settings: Settings) -> None:
    classes = settings.data_classes
    if len(set(classes)) != len(classes):
        raise SettingsError("data_classes: names must be unique")
    if settings.default_data_class not in classes:
        raise SettingsError(
            f"default_data_class: {settings.default_data_class!r} is not one of data_classes"
        )
    for name in settings.in_vpc_data_classes or ():
        if name not in classes:
            raise SettingsError(f"in_vpc_data_classes: {name!r} is not one of data_classes")
    for tenant, floor in settings.tenant_floors.items():
        if floor not in classes:
            raise SettingsError(f"tenant_floors.{tenant}: {floor!r} is not one of data_classes")
    if settings.policy_source == "bundle" and settings.bundle_url is None:
        raise SettingsError("bundle_url: required when policy_source is bundle")
    if settings.policy_source == "bundle" and settings.shadow_policy:
        raise SettingsError("shadow_policy: compiled here, so policy_source files only")
    if settings.bundle_poll_max_s < settings.bundle_poll_min_s:
        raise SettingsError("bundle_poll_max_s: must not be below bundle_poll_min_s")
    if settings.workers > 1:
        _check_workers(settings)
    required = {"s3": "audit_s3_bucket", "gcs": "audit_gcs_bucket", "http": "audit_http_url"}
    needed = required.get(settings.audit_sink)
    if needed is not None and getattr(settings, needed) is None:
        raise SettingsError(f"{needed}: required when audit_sink is {settings.audit_sink}")


def _check_workers(settings: Settings) -> None:
    """What cannot be shared by several worker processes (gateway/workers.py)."""
    n = settings.workers
    if settings.limits is not None and settings.limits_redis_url is None:
        raise SettingsError(
            f"limits_redis_url: required with workers {n}: in-process counters would "
            f"let each of the {n} workers grant the whole limit"
        )
    if settings.audit_decision_logs and settings.audit_decision_logs_port:
        raise SettingsError(
            f"audit_decision_logs_port: a fixed port cannot be shared by {n} workers "
            "(each worker's own OPA ships its decisions to that worker)"
        )
    if settings.audit_decision_logs and settings.audit_decision_logs_token_file:
        raise SettingsError(
            f"audit_decision_logs_token_file: one token file cannot serve {n} workers"
        )

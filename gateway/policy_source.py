"""Where the OPA sidecar gets its policy: the `policy_source: bundle` configuration.

In bundle mode the sidecar pulls a signed policy bundle (`kamiwaza policy
bundle`, `kamiwaza policy publish`) with OPA's own bundle plugin and activates
each new revision atomically; the gateway compiles nothing. This module turns
the `bundle_*` settings into OPA's `services`, `bundles` and `keys`
configuration: :func:`opa_bundle_config` is THE definition of that config. The
gateway's own sidecar gets it (merged with the decision log shipping of
:mod:`observability.decision_log`); the Helm chart renders the same document
into its ConfigMap for the OPA container (`deploy/helm/kamiwaza`), and a test
checks that the two agree for the same values.

Sources and their credentials (`bundle_credentials`, default first):

- `s3://bucket/key`: `environment` (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
  and AWS_REGION, which the sidecar gets from `bundle_region`),
  `web_identity` (EKS IRSA: AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE),
  `metadata` (the EC2 instance or ECS task role).
- `gs://bucket/key`: `gcp_metadata` (GKE workload identity), `token_file`
  (a bearer token in `bundle_token_file`), `none` (an emulator).
- `https://host/path`: `none`, `token_file`.
- `file:///path/bundle.tar.gz`: a bundle on the sidecar's file system (the
  chart's ConfigMap mode, for clusters without object storage); OPA reads it
  again at every poll, so an updated ConfigMap rolls out like a new upload.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import StartupError
from gateway.settings import Settings
from observability.pipeline import AuditPipeline
from translator.registry import Registry

BUNDLE_NAME = "kamiwaza"  # the bundle's name in OPA's status and data.system.bundles
SERVICE = "kamiwaza-bundles"
KEY_ID = "kamiwaza-bundle"
_OBJECT_NAME = re.compile(r"[A-Za-z0-9._~/-]+")
GCS_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
CREDENTIALS = {
    "s3": ("environment", "web_identity", "metadata"),
    "gs": ("gcp_metadata", "token_file", "none"),
    "https": ("none", "token_file"),
    "http": ("none", "token_file"),  # loopback test servers only (checked below)
    "file": ("none",),
}


class BundleConfigError(StartupError):
    """The bundle_* settings do not describe a source OPA can poll."""


@dataclass(frozen=True, slots=True)
class BundleSource:
    """The bundle_* settings, checked."""

    url: str
    scheme: str
    credentials: str
    token_file: str | None
    region: str | None
    endpoint_url: str | None
    poll_min_s: int
    poll_max_s: int
    persist: bool
    persist_dir: str | None
    verification_key: str | None  # PEM file
    signing_alg: str

    @classmethod
    def from_settings(cls, settings: Settings) -> BundleSource:
        url = settings.bundle_url
        if url is None:
            raise BundleConfigError("bundle_url: required when policy_source is bundle")
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in CREDENTIALS or not (parts.netloc or (scheme == "file" and parts.path)):
            raise BundleConfigError(
                "bundle_url: expected s3://bucket/key, gs://bucket/key, https://host/path "
                f"or file:///path, got {url!r}"
            )
        if scheme in ("s3", "gs") and not parts.path.strip("/"):
            raise BundleConfigError(f"bundle_url: {url!r} names a bucket but no object")
        if scheme == "gs" and not _OBJECT_NAME.fullmatch(parts.path.lstrip("/")):
            # Only "/" is escaped in the resource (here and in the Helm chart).
            raise BundleConfigError(
                f"bundle_url: the object name in {url!r} may use letters, digits and ._~/- only"
            )
        if scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise BundleConfigError("bundle_url: plain http is for loopback only; use https")
        credentials = settings.bundle_credentials or CREDENTIALS[scheme][0]
        if credentials not in CREDENTIALS[scheme]:
            raise BundleConfigError(
                f"bundle_credentials: expected one of {', '.join(CREDENTIALS[scheme])} "
                f"for a {scheme}:// bundle_url, got {credentials!r}"
            )
        if credentials == "token_file" and not settings.bundle_token_file:
            raise BundleConfigError(
                "bundle_token_file: required with bundle_credentials token_file"
            )
        if scheme == "s3" and credentials != "metadata" and not settings.bundle_region:
            raise BundleConfigError("bundle_region: required for an s3:// bundle_url")
        return cls(
            url=url,
            scheme=scheme,
            credentials=credentials,
            token_file=settings.bundle_token_file,
            region=settings.bundle_region,
            endpoint_url=(settings.bundle_endpoint_url or "").rstrip("/") or None,
            poll_min_s=settings.bundle_poll_min_s,
            poll_max_s=settings.bundle_poll_max_s,
            persist=settings.bundle_persist,
            persist_dir=settings.bundle_persist_dir,
            verification_key=settings.bundle_verification_key,
            signing_alg=settings.bundle_signing_alg,
        )

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def key(self) -> str:
        return urlsplit(self.url).path.lstrip("/")


def _service(source: BundleSource) -> tuple[dict[str, Any] | None, str]:
    """OPA's service entry and the bundle's resource path on it (a file: no service)."""
    if source.scheme == "file":
        return None, source.url
    if source.scheme == "s3":
        if source.endpoint_url:  # S3-compatible store: path-style addressing
            url = f"{source.endpoint_url}/{source.bucket}"
        else:
            url = f"https://{source.bucket}.s3.{source.region or 'us-east-1'}.amazonaws.com"
        signing: dict[str, Any]
        if source.credentials == "environment":
            signing = {"environment_credentials": {}}
        elif source.credentials == "web_identity":
            signing = {"web_identity_credentials": {"aws_region": source.region}}
        else:
            signing = {"metadata_credentials": {"aws_region": source.region}}
            if source.region is None:
                del signing["metadata_credentials"]["aws_region"]
        return {"url": url, "credentials": {"s3_signing": signing}}, source.key
    if source.scheme == "gs":
        base = source.endpoint_url or "https://storage.googleapis.com"
        service: dict[str, Any] = {"url": f"{base}/storage/v1/b/{source.bucket}/o"}
        if source.credentials == "gcp_metadata":
            service["credentials"] = {"gcp_metadata": {"scopes": [GCS_SCOPE]}}
        elif source.credentials == "token_file":
            service["credentials"] = {"bearer": {"token_path": source.token_file}}
        # The JSON API's media download: the object name is one path segment.
        return service, f"{source.key.replace('/', '%2F')}?alt=media"
    parts = urlsplit(source.url)
    service = {"url": f"{parts.scheme}://{parts.netloc}"}
    if source.credentials == "token_file":
        service["credentials"] = {"bearer": {"token_path": source.token_file}}
    resource = parts.path.lstrip("/") + (f"?{parts.query}" if parts.query else "")
    return service, resource


def opa_bundle_config(source: BundleSource) -> dict[str, Any]:
    """OPA's configuration for pulling the policy bundle (services, bundles, keys, status).

    The chart's `opa-config.yaml` is this document for the same values."""
    service, resource = _service(source)
    bundle: dict[str, Any] = {
        "resource": resource,
        "persist": source.persist,
        "polling": {
            "min_delay_seconds": source.poll_min_s,
            "max_delay_seconds": source.poll_max_s,
        },
    }
    config: dict[str, Any] = {"bundles": {BUNDLE_NAME: bundle}}
    if service is not None:
        bundle["service"] = SERVICE
        config["services"] = {SERVICE: service}
    if source.verification_key is not None:
        bundle["signing"] = {"keyid": KEY_ID}
        config["keys"] = {
            KEY_ID: {"algorithm": source.signing_alg, "key": _read_key(source.verification_key)}
        }
    if source.persist and source.persist_dir is not None:
        config["persistence_directory"] = source.persist_dir
    # The status API (GET /v1/status) names the active revision and why a
    # download or activation failed; its Prometheus metrics go to OPA's /metrics.
    config["status"] = {"prometheus": True}
    return config


def _read_key(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise BundleConfigError(f"bundle_verification_key {path}: {err.strerror}") from err
    if "PUBLIC KEY" not in text:
        raise BundleConfigError(
            f"bundle_verification_key {path}: expected a PEM public key (BEGIN PUBLIC KEY)"
        )
    return text


def sidecar_env(source: BundleSource) -> dict[str, str]:
    """Variables the sidecar needs for the source: OPA's AWS signing reads AWS_REGION."""
    return {"AWS_REGION": source.region} if source.scheme == "s3" and source.region else {}


def merge_configs(*configs: dict[str, Any] | None) -> dict[str, Any]:
    """OPA configs combined; `services` and `keys` are merged by name."""
    out: dict[str, Any] = {}
    for config in configs:
        for key, value in (config or {}).items():
            if key in ("services", "keys") and key in out:
                clash = set(out[key]) & set(value)
                if clash:
                    raise ValueError(f"OPA config: {key} {sorted(clash)} defined twice")
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


def load_registry(settings: Settings) -> Registry:
    """Bundle mode: the endpoint registry alone (the bundle brings the policy).

    The gateway still needs it for what OPA never sees: URLs, credentials,
    timeouts, prices. Errors stop start-up, each as `file:line:col`."""
    from translator.pipeline import default_registry_path, display_path
    from translator.registry import check_registry
    from translator.source import load

    BundleSource.from_settings(settings)  # a typo stops start-up, even with opa_url
    path = settings.endpoints or default_registry_path(settings.policy)
    shown = display_path(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise StartupError(f"endpoint registry {shown}: {err.strerror}") from err
    doc = load(text, shown)
    registry, diagnostics = check_registry(doc)
    errors = [d for d in diagnostics if d.is_error]
    if errors:
        report = "\n".join(d.render(doc.lines) for d in errors)
        raise StartupError(f"the endpoint registry has errors:\n{report}")
    return registry


def sidecar_paths(settings: Settings, runtime_dir: str) -> list[str]:
    """What the own sidecar loads from files: the compiled policy and rego/, or
    nothing in bundle mode (the bundle plugin brings both)."""
    if settings.policy_source == "bundle":
        return []
    return [runtime_dir, settings.rego_dir, *settings.overrides_dirs]


def sidecar_settings_env(settings: Settings) -> dict[str, str]:
    if settings.policy_source != "bundle":
        return {}
    return sidecar_env(BundleSource.from_settings(settings))


def write_sidecar_config(
    settings: Settings, audit: AuditPipeline, directory: str, *, worker: str | None = None
) -> Path | None:
    """The own sidecar's config file: decision log shipping (the audit
    pipeline's) and, in bundle mode, the bundle; None: nothing to configure.

    `worker` (e.g. "w1") gives the sidecar of that worker its own persistence
    directory below the configured one: each OPA writes its bundle there."""
    if settings.policy_source != "bundle":
        return audit.write_opa_config(directory)
    source = BundleSource.from_settings(settings)
    if source.persist:
        base = source.persist_dir or Path(settings.audit_dir).resolve() / "opa"
        persist_dir = Path(base) / worker if worker else Path(base)
        if source.persist_dir is None or worker:
            os.makedirs(persist_dir, exist_ok=True)
            source = replace(source, persist_dir=str(persist_dir))
    decision_logs = audit.ingest.opa_config() if audit.ingest is not None else None
    path = Path(directory) / "opa-config.json"
    path.touch(mode=0o600)  # holds the decision log ingestion token
    path.write_text(json.dumps(merge_configs(decision_logs, opa_bundle_config(source)), indent=2))
    return path

"""The audit pipeline's typed configuration, from the gateway's settings.

The composition root hands :mod:`observability` these frozen configs; the
audit pipeline never reads the gateway's settings itself.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

from gateway.settings import Settings, SettingsError, load_settings
from gateway.worker import WorkerIdentity, worker_host, worker_spool_dir
from observability.audit_reader import SourceOptions
from observability.pipeline import AuditConfig, AuditConfigError, SinkConfig


def sink_config(settings: Settings) -> SinkConfig:
    return SinkConfig(
        kind=settings.audit_sink,
        prefix=settings.audit_prefix,
        local_dir=settings.audit_dir,
        local_max_file_bytes=settings.audit_local_max_file_bytes,
        s3_bucket=settings.audit_s3_bucket,
        s3_region=settings.audit_s3_region,
        s3_kms_key_id=settings.audit_s3_kms_key_id,
        s3_endpoint_url=settings.audit_s3_endpoint_url,
        gcs_bucket=settings.audit_gcs_bucket,
        gcs_project=settings.audit_gcs_project,
        gcs_endpoint_url=settings.audit_gcs_endpoint_url,
        http_url=settings.audit_http_url,
        http_token_env=settings.audit_http_token_env,
        http_ca_file=settings.audit_http_ca_file,
    )


def audit_config(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    worker: WorkerIdentity | None = None,
) -> AuditConfig:
    """The spool's configuration; the prompt-hash salt is read from its variable now.

    A worker of `serve --workers` has its own spool and stream (gateway/worker.py)."""
    env = os.environ if environ is None else environ
    salt: bytes | None = None
    if settings.audit_prompt_salt_env:
        value = env.get(settings.audit_prompt_salt_env, "")
        if not value:
            raise AuditConfigError(
                f"audit_prompt_salt_env: environment variable "
                f"{settings.audit_prompt_salt_env} is not set"
            )
        salt = value.encode()
    return AuditConfig(
        spool_dir=worker_spool_dir(spool_dir(settings), worker),
        host=worker_host(settings.audit_host or socket.gethostname(), worker),
        prefix=settings.audit_prefix,
        spool_max_bytes=settings.audit_spool_max_bytes,
        spool_full=settings.audit_spool_full,
        fsync_interval_s=settings.audit_fsync_interval_ms / 1000,
        batch_interval_s=settings.audit_batch_interval_s,
        batch_max_bytes=settings.audit_batch_max_bytes,
        retry_max_s=settings.audit_retry_max_s,
        decision_logs=settings.audit_decision_logs,
        decision_logs_port=settings.audit_decision_logs_port,
        decision_logs_token_file=(
            Path(settings.audit_decision_logs_token_file)
            if settings.audit_decision_logs_token_file
            else None
        ),
        prompt_salt=salt,
    )


def configured_sink(config_file: str | None) -> SinkConfig:
    """The sink of the gateway configured by `config_file` and KAMIWAZA_* (audit CLI)."""
    try:
        return sink_config(load_settings(config_file))
    except SettingsError as err:
        raise AuditConfigError(str(err)) from err


def spool_dir(settings: Settings) -> Path:
    return Path(settings.audit_spool_dir or Path(settings.audit_dir) / "spool")


def record_sources(settings: Settings) -> tuple[list[str], SourceOptions, bool]:
    """Where this gateway's audit records can be read back (`kamiwaza stats`,
    the console): the sink's objects and the spool's records not shipped yet.

    Returns the sources, how to reach a bucket, and whether they hold every
    record (False for the HTTP collector, which cannot be read back: only the
    spool is).
    """
    spool = spool_dir(settings)
    if settings.audit_sink == "local":
        root = Path(settings.audit_dir)
        sources = [str(root)]  # the sink's files and, below it by default, the spool
        if not spool.resolve().is_relative_to(root.resolve()):
            sources.append(str(spool))
        return sources, SourceOptions(), True
    if settings.audit_sink == "http":
        return [str(spool)], SourceOptions(), False
    bucket, options = sink_config(settings).read_back()
    return [bucket, str(spool)], options, True

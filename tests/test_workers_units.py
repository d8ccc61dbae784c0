"""The parts of `serve --workers` that need no processes: the setting and what
cannot be shared by workers, each worker's spool, stream, metrics identity and
log lines."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest

from gateway.audit_config import audit_config
from gateway.logs import configure_logging, tag_worker
from gateway.settings import SettingsError, load_settings
from gateway.worker import WorkerIdentity, orphan_spools, warn_orphan_spools
from observability import metrics


def test_workers_setting_accepts_a_count_or_auto() -> None:
    assert load_settings(environ={}).workers == 1
    assert load_settings(overrides={"workers": "3"}, environ={}).workers == 3
    assert load_settings(environ={"KAMIWAZA_WORKERS": "auto"}).workers == (os.cpu_count() or 1)


@pytest.mark.parametrize("value", ["0", "many", "-1"])
def test_a_bad_workers_value_names_the_flag(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(overrides={"workers": value}, environ={})
    assert str(info.value) == (f"--workers: expected a number of workers or auto, got {value!r}")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"limits": "limits.yaml"},
            "limits_redis_url: required with workers 2: in-process counters would let "
            "each of the 2 workers grant the whole limit",
        ),
        (
            {"audit_decision_logs_port": "9999"},
            "audit_decision_logs_port: a fixed port cannot be shared by 2 workers "
            "(each worker's own OPA ships its decisions to that worker)",
        ),
        (
            {"audit_decision_logs_token_file": "/run/token"},
            "audit_decision_logs_token_file: one token file cannot serve 2 workers",
        ),
    ],
)
def test_what_workers_cannot_share_fails_at_start_up(
    overrides: dict[str, str], message: str
) -> None:
    load_settings(overrides=overrides, environ={})  # fine with one worker
    with pytest.raises(SettingsError) as info:
        load_settings(overrides={**overrides, "workers": "2"}, environ={})
    assert str(info.value) == message


def test_limits_shared_in_redis_work_with_workers() -> None:
    settings = load_settings(
        overrides={"workers": "2", "limits": "l.yaml", "limits_redis_url": "redis://x:6379"},
        environ={},
    )
    assert settings.workers == 2


def test_each_worker_has_its_own_spool_and_stream_host(tmp_path: Path) -> None:
    settings = load_settings(overrides={"audit_dir": str(tmp_path), "audit_host": "gw"}, environ={})
    alone = audit_config(settings, {})
    first = audit_config(settings, {}, worker=WorkerIdentity(0, 2))
    second = audit_config(settings, {}, worker=WorkerIdentity(1, 2))
    # Worker 0 is the gateway as it runs alone: its chain continues across the change.
    assert (alone.spool_dir, alone.host) == (tmp_path / "spool", "gw")
    assert (first.spool_dir, first.host) == (tmp_path / "spool", "gw")
    assert (second.spool_dir, second.host) == (tmp_path / "spool" / "w1", "gw-w1")


def test_spools_of_workers_this_run_does_not_start_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    for name, segments in (("w1", 1), ("w2", 2), ("w3", 0)):
        (spool / name).mkdir(parents=True)
        for n in range(segments):
            (spool / name / f"{n:08d}-0000491234.jsonl").write_text("{}\n")
    assert orphan_spools(spool, 4) == []
    assert orphan_spools(spool, 2) == [(spool / "w2", 2)]
    with caplog.at_level(logging.ERROR):
        warn_orphan_spools(spool, 1)
    assert [r.getMessage() for r in caplog.records] == [
        f"audit spool {spool / 'w1'} holds 1 unshipped segment(s) of a worker this run "
        "does not start; run with --workers 2 or more once to ship them",
        f"audit spool {spool / 'w2'} holds 2 unshipped segment(s) of a worker this run "
        "does not start; run with --workers 3 or more once to ship them",
    ]


def test_a_workers_metrics_resource_names_it() -> None:
    saved = dict(metrics._instance_attributes)
    try:
        metrics.set_instance_attributes({"kamiwaza.worker": "w1"})
        attributes = metrics._resource().attributes
    finally:
        metrics._instance_attributes.clear()
        metrics._instance_attributes.update(saved)
    assert attributes["kamiwaza.worker"] == "w1"
    assert str(attributes["service.instance.id"]).endswith(f"-{os.getpid()}")
    assert "kamiwaza.worker" not in metrics._resource().attributes


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_a_workers_log_lines_name_it(fmt: str) -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("info", fmt, stream=out)
        tag_worker("w1")
        logging.getLogger("gateway.test").info("hello")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    line = out.getvalue().strip()
    if fmt == "json":
        doc = json.loads(line)
        assert (doc["worker"], doc["logger"], doc["message"]) == ("w1", "gateway.test", "hello")
    else:
        assert line.endswith(" INFO [w1] gateway.test: hello")


@pytest.mark.parametrize("configured", [None, "persist"])
def test_each_workers_sidecar_persists_its_bundle_apart(
    tmp_path: Path, configured: str | None
) -> None:
    from gateway.audit_config import sink_config
    from gateway.policy_source import write_sidecar_config
    from observability.pipeline import AuditPipeline

    overrides = {
        "policy_source": "bundle",
        "bundle_url": "file:///srv/bundle.tar.gz",
        "audit_dir": str(tmp_path),
        "audit_decision_logs": "false",
    }
    if configured:
        overrides["bundle_persist_dir"] = str(tmp_path / configured)
    settings = load_settings(overrides=overrides, environ={})
    audit = AuditPipeline.build(audit_config(settings, {}), sink_config(settings), environ={})
    base = tmp_path / (configured or "opa")
    dirs = []
    for worker in (None, "w1"):
        path = write_sidecar_config(settings, audit, str(tmp_path), worker=worker)
        assert path is not None
        dirs.append(json.loads(path.read_text())["persistence_directory"])
    assert dirs == [str(base), str(base / "w1")]
    assert (base / "w1").is_dir()

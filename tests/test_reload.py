"""Hot reload in files mode: the policy recompiled and swapped into the running
sidecar under traffic (no request fails, the audit records switch revision at
one point), a broken policy or a registry change refused with the running
revision kept, and SIGHUP doing the same for `kamiwaza serve`."""

from __future__ import annotations

import logging
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.policy_reload import POLICY_RELOADER
from tests.bundle_helpers import Traffic, policy_routing_to, revisions_in_order, switches_once
from tests.bundle_helpers import wait_ready as wait_ready_async
from tests.gateway_harness import start_gateway
from tests.processes import free_port
from tests.test_serve import _example, _get, _serve
from translator.pipeline import check

pytestmark = pytest.mark.integration


def _revision(path: Path) -> str:
    result = check(str(path))
    assert result.ir is not None, result.render_diagnostics()
    return result.ir.revision


async def test_file_watch_swaps_the_policy_under_traffic_and_refuses_a_broken_one(
    tmp_path: Path, fake_upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway(
        tmp_path,
        fake_upstream,
        policy=policy_routing_to("private-gpu"),
        # A loaded machine may keep OPA past the default 250 ms while it swaps
        # policies; a timeout is not what this test is about, a gap would be.
        settings_overrides={"policy_watch_s": 0.1, "opa_timeout_ms": 5000},
    )
    url = gw.url("").rstrip("/")
    policy = gw.workdir / "routing.yaml"
    try:
        old = _revision(policy)
        body = await wait_ready_async(url, lambda s, b: s == 200)
        assert body["policy"]["revision"] == old
        traffic = Traffic(url, gw.keys["acme"])
        traffic.start()
        await traffic.count(40)
        policy.write_text(policy_routing_to("private-gpu-b"))
        new = _revision(policy)
        await wait_ready_async(url, lambda s, b: b["policy"]["revision"] == new)
        await traffic.count(40)
        # An unknown endpoint: refused, reported as file:line:col, the new revision stays.
        policy.write_text(policy_routing_to("nowhere"))
        body = await wait_ready_async(url, lambda s, b: b["policy"]["failures"] == 1)
        assert (body["status"], body["policy"]["revision"]) == ("ready", new)
        assert re.search(r"routing\.yaml:4:17: error\[E\d+\]: ", body["policy"]["last_error"])
        await traffic.count(20)
        await traffic.stop()
    finally:
        await gw.close()
    assert set(traffic.statuses) == {200}
    records = await gw.audit_records()
    assert len(records) == len(traffic.statuses)
    for sequence in revisions_in_order(records, traffic):
        assert switches_once(sequence, old, new), sequence
    assert {r["policy_revision"]: r["endpoint"] for r in records} == {
        old: "private-gpu",
        new: "private-gpu-b",
    }
    refused = [r for r in caplog.records if r.levelno == logging.ERROR and "refused" in r.message]
    assert len(refused) == 1
    assert re.search(r"routing\.yaml:4:17: error", refused[0].getMessage())


async def test_a_registry_change_is_refused_until_a_restart(
    tmp_path: Path, fake_upstream: Any
) -> None:
    gw = await start_gateway(tmp_path, fake_upstream, policy=policy_routing_to("private-gpu"))
    try:
        reloader = gw.app[POLICY_RELOADER]
        registry = gw.workdir / "endpoints.yaml"
        registry.write_text(registry.read_text().replace("in_vpc: false", "in_vpc: true", 1))
        (gw.workdir / "routing.yaml").write_text(policy_routing_to("bedrock"))
        assert await reloader.reload("test") is False
        state = (await wait_ready_async(gw.url("").rstrip("/"), lambda s, b: s == 200))["policy"]
        assert state["last_error"] == (
            "policy reload (test): the endpoint registry changed (anthropic); "
            "restart the gateway to apply registry changes"
        )
        assert reloader.reloads == 0
    finally:
        await gw.close()


def test_sighup_reloads_the_policy_of_kamiwaza_serve(
    tmp_path: Path, opa_bin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir, _ = _example(tmp_path)
    monkeypatch.chdir(workdir)  # the revision covers rule sources, named as serve names them
    port = free_port()
    proc = _serve(workdir, port, opa_bin)
    try:
        old = _get(f"http://127.0.0.1:{port}/readyz")[1]["policy"]["revision"]
        assert old == _revision(Path("routing.yaml"))
        policy = Path("routing.yaml")
        policy.write_text(policy.read_text().replace("route_to: anthropic", "route_to: bedrock"))
        new = _revision(policy)
        assert new != old
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            body = _get(f"http://127.0.0.1:{port}/readyz")[1]
            if body["policy"]["revision"] == new:
                break
            time.sleep(0.05)  # the reload runs in the background
        assert body["status"] == "ready"
        assert body["policy"]["revision"] == new
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert f"revision {new} swapped in" in (workdir / "serve.log").read_text()

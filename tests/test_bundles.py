"""Policy bundles end to end: built and signed (`kamiwaza policy bundle`), published
to the moto S3 server and to fake-gcs-server (`kamiwaza policy publish`), pulled
by OPA's bundle plugin with the configuration the Helm chart renders, rolled out
under traffic, and refused when broken or badly signed."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from observability.audit_reader import decision_events
from observability.bundle_publish import PublishError, publish
from observability.sinks.gcs import gcs_client
from tests.bundle_helpers import (
    Traffic,
    broken_bundle,
    make_bundle,
    policy_routing_to,
    revisions_in_order,
    rsa_key_pair,
    switches_once,
    wait_ready,
)
from tests.gateway_harness import ROOT, start_gateway
from tests.helm import config_files, container, render
from tests.processes import free_port, stop_process, wait_http

KAMIWAZA = str(Path(sys.executable).parent / "kamiwaza")
BUCKET = "kamiwaza-policy"
KEY = "prod/kamiwaza/bundle.tar.gz"
TOKEN_DIR = "/run/kamiwaza/decision-logs"

pytestmark = pytest.mark.integration


def test_bundle_cli_builds_a_deterministic_signed_bundle(tmp_path: Path, opa_bin: str) -> None:
    keys = rsa_key_pair(tmp_path, "signer")
    out = [tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"]
    for target in out:
        proc = subprocess.run(
            [KAMIWAZA, "policy", "bundle", str(ROOT / "policies" / "routing.yaml"),
             "-o", str(target), "--signing-key", str(keys.private), "--rego", str(ROOT / "rego"),
             "--overrides", str(ROOT / "policies" / "examples" / "overrides")],
            capture_output=True, text=True, timeout=60, check=False,
            env={"KAMIWAZA_OPA_BIN": opa_bin, "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert out[0].read_bytes() == out[1].read_bytes()
    lines = proc.stdout.splitlines()
    assert lines[0] == f"wrote {out[1]} (8 files, signed RS256)"
    revision = lines[1].removeprefix("revision ")
    with tarfile.open(out[0], "r:gz") as tar:
        names = tar.getnames()
        doc = json.loads(tar.extractfile(".manifest").read())  # type: ignore[union-attr]
        data = json.loads(tar.extractfile("kamiwaza/data.json").read())  # type: ignore[union-attr]
    assert names == [
        ".manifest",
        ".signatures.json",
        "kamiwaza/data.json",
        "kamiwaza/guards/guards.rego",
        "kamiwaza/health/health.rego",
        "kamiwaza/policy/policy.rego",
        "kamiwaza/route/route.rego",
        "overrides/legal_hold/legal_hold.rego",
    ]
    assert doc == {
        "revision": revision,
        "roots": ["kamiwaza", "overrides"],
        "rego_version": 1,
        "metadata": {"built_by": "kamiwaza policy bundle", "policy": doc["metadata"]["policy"]},
    }
    assert revision.startswith("sha256:")
    assert set(data) == {"endpoints", "classes"}
    assert data["classes"]["order"] == ["public", "internal", "confidential", "pii-restricted"]


def test_bundle_cli_reports_policy_errors_as_file_line_col(tmp_path: Path, opa_bin: str) -> None:
    (tmp_path / "endpoints.yaml").write_text((ROOT / "policies" / "endpoints.yaml").read_text())
    (tmp_path / "routing.yaml").write_text("version: v1\nrules:\n  - match: {tenat: x}\n")
    proc = subprocess.run(
        [KAMIWAZA, "policy", "bundle", "routing.yaml", "-o", "out.tar.gz"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        env={"KAMIWAZA_OPA_BIN": opa_bin, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "routing.yaml:3:13: error[E003]: unknown match key 'tenat'" in proc.stderr
    assert not (tmp_path / "out.tar.gz").exists()


def test_publish_refuses_what_is_not_a_bundle(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(PublishError, match=r"^not a policy bundle"):
        publish(junk, "s3://bucket/key.tar.gz")
    with pytest.raises(PublishError, match=r"^expected s3://bucket/path"):
        publish(junk, "s3://bucket/")


async def test_s3_rollout_under_traffic_refuses_broken_and_badly_signed_bundles(
    tmp_path: Path, fake_upstream: Any, moto_s3: str, aws_env: dict[str, str]
) -> None:
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=BUCKET)
    signer = rsa_key_pair(tmp_path, "signer")
    impostor = rsa_key_pair(tmp_path, "impostor")
    gw = await start_gateway(
        tmp_path,
        fake_upstream,
        settings_overrides={
            "policy_source": "bundle",
            "bundle_url": f"s3://{BUCKET}/{KEY}",
            "bundle_region": "us-east-1",
            "bundle_endpoint_url": moto_s3,
            "bundle_poll_min_s": 1,
            "bundle_poll_max_s": 1,
            "bundle_verification_key": str(signer.public),
        },
    )
    url = gw.url("").rstrip("/")
    try:
        # Nothing published yet: not ready, and requests fail closed.
        body = await wait_ready(url, lambda s, b: s == 503 and b["policy"]["failures"] > 0)
        assert body == {
            "status": "unavailable",
            "opa": "healthy",
            "policy": {
                "source": "bundle",
                "revision": None,
                "active": False,
                "failures": 1,  # a failure is counted once, however often OPA retries
                "last_error": "bundle_error: server replied with Not Found",
            },
        }
        old_path, old = make_bundle(gw.workdir, policy_routing_to("private-gpu"), "old", signer)
        new_path, new = make_bundle(gw.workdir, policy_routing_to("private-gpu-b"), "new", signer)
        assert publish(old_path, f"s3://{BUCKET}/{KEY}", endpoint_url=moto_s3)[1] == old
        body = await wait_ready(url, lambda s, b: s == 200)
        assert (body["policy"]["revision"], body["policy"]["active"]) == (old, True)

        traffic = Traffic(url, gw.keys["acme"])
        traffic.start()
        await traffic.count(40)
        publish(new_path, f"s3://{BUCKET}/{KEY}", endpoint_url=moto_s3)
        await wait_ready(url, lambda s, b: b["policy"]["revision"] == new)
        await traffic.count(40)

        # A bundle that does not compile: refused, the new revision stays.
        publish(broken_bundle(gw.workdir, new_path, "sha256:broken", signer), f"s3://{BUCKET}/{KEY}",
                endpoint_url=moto_s3)  # fmt: skip
        body = await wait_ready(url, lambda s, b: b["policy"]["failures"] == 2)
        assert (body["policy"]["revision"], body["policy"]["active"]) == (new, True)
        assert re.search(
            r"^kamiwaza/policy/policy\.rego:\d+:\d+: ", body["policy"]["last_error"], re.M
        )
        # Signed with another key: refused too.
        bad_path, _ = make_bundle(gw.workdir, policy_routing_to("anthropic"), "bad", impostor)
        publish(bad_path, f"s3://{BUCKET}/{KEY}", endpoint_url=moto_s3)
        body = await wait_ready(url, lambda s, b: b["policy"]["failures"] == 3)
        assert body["policy"]["revision"] == new
        assert body["policy"]["last_error"] == (
            "bundle_error: failed to verify JWT signature: crypto/rsa: verification error"
        )
        await traffic.count(20)
        await traffic.stop()
    finally:
        await gw.close()
    assert set(traffic.statuses) == {200}
    records = await gw.audit_records()
    assert len(records) == len(traffic.statuses)
    for sequence in revisions_in_order(records, traffic):
        assert switches_once(sequence, old, new), sequence
    by_revision = {r["policy_revision"]: r["endpoint"] for r in records}
    assert by_revision == {old: "private-gpu", new: "private-gpu-b"}


async def test_gcs_bundles_with_opa_configured_by_the_chart(
    tmp_path: Path, fake_upstream: Any, fake_gcs: str, opa_bin: str
) -> None:
    """The OPA container's args and config as `helm template` renders them, the
    gateway on the chart's config.yaml: a rollout from the GCS emulator."""
    gcs_client(None, fake_gcs).create_bucket(BUCKET)
    opa_port, diag_port, ingest_port = free_port(), free_port(), free_port()
    docs = render(
        {
            "bundle": {"url": f"gs://{BUCKET}/{KEY}", "credentials": "none",
                       "endpointUrl": fake_gcs,
                       "polling": {"minDelaySeconds": 1, "maxDelaySeconds": 1}},
            "opa": {"port": opa_port, "diagnosticPort": diag_port,
                    "persistenceDirectory": str(tmp_path / "opa-persist"),
                    "decisionLogs": {"port": ingest_port}},
        },
        tmp_path,
    )  # fmt: skip
    # The volume the two containers share for the ingestion token, here.
    shared = str(tmp_path / "decision-logs")
    chart = config_files(docs)
    opa_config = tmp_path / "opa-config.yaml"
    opa_config.write_text(chart["data"]["opa-config.yaml"].replace(TOKEN_DIR, shared))
    chart["gateway"]["audit_decision_logs_token_file"] = chart["gateway"][
        "audit_decision_logs_token_file"
    ].replace(TOKEN_DIR, shared)
    args = [
        f"--config-file={opa_config}" if a.startswith("--config-file=") else a
        for a in container(docs, "opa")["args"]
    ]
    assert args[:3] == ["run", "--server", f"--addr=127.0.0.1:{opa_port}"]
    with (tmp_path / "opa.log").open("ab") as log:
        opa = subprocess.Popen([opa_bin, *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_http(f"http://127.0.0.1:{diag_port}/health", opa, 30)
        gateway_config = {
            key: value
            for key, value in chart["gateway"].items()
            if key not in ("host", "port", "endpoints", "audit_dir", "keys")
        }
        assert gateway_config["opa_url"] == f"http://127.0.0.1:{opa_port}"
        gw = await start_gateway(tmp_path, fake_upstream, settings_overrides=gateway_config)
        url = gw.url("").rstrip("/")
        try:
            await wait_ready(url, lambda s, b: s == 503 and b["opa"] == "healthy")
            old_path, old = make_bundle(gw.workdir, policy_routing_to("private-gpu"), "old", None)
            new_path, new = make_bundle(gw.workdir, policy_routing_to("bedrock"), "new", None)
            target = f"gs://{BUCKET}/{KEY}"
            publish(old_path, target, endpoint_url=fake_gcs)
            body = await wait_ready(url, lambda s, b: s == 200)
            assert body["policy"]["revision"] == old
            traffic = Traffic(url, gw.keys["acme"], workers=2)
            traffic.start()
            await traffic.count(20)
            publish(new_path, target, endpoint_url=fake_gcs)
            body = await wait_ready(url, lambda s, b: b["policy"]["revision"] == new)
            assert "last_error" not in body["policy"]  # cleared by the activation
            failures = body["policy"]["failures"]  # 404s before the first upload count
            await traffic.count(20)
            publish(broken_bundle(gw.workdir, new_path, "sha256:broken"), target,
                    endpoint_url=fake_gcs)  # fmt: skip
            body = await wait_ready(url, lambda s, b: b["policy"]["failures"] == failures + 1)
            assert (body["status"], body["policy"]["revision"]) == ("ready", new)
            assert re.search(
                r"^kamiwaza/policy/policy\.rego:\d+:\d+: ", body["policy"]["last_error"], re.M
            )
            await traffic.count(10)
            await traffic.stop()
            # OPA's decision log: the events of the first revision's requests
            # have had time to ship (OPA holds the latest ones until a chunk fills).
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                records = await gw.audit_records()
                events = {e["decision_id"]: e for e in decision_events(str(gw.audit_dir))}
                if {r["decision_id"] for r in records if r["policy_revision"] == old} <= set(
                    events
                ):
                    break
                await asyncio.sleep(0.1)  # the next decision log upload
        finally:
            await gw.close()
    finally:
        stop_process(opa)
    assert set(traffic.statuses) == {200}
    records = await gw.audit_records()
    for sequence in revisions_in_order(records, traffic):
        assert switches_once(sequence, old, new), sequence
    assert {r["policy_revision"]: r["endpoint"] for r in records} == {
        old: "private-gpu",
        new: "bedrock",
    }
    # OPA's decision log reached the gateway's ingestion: each event joins its
    # record and names the same bundle revision.
    joined = [(r, events[r["decision_id"]]) for r in records if r["decision_id"] in events]
    assert {r["decision_id"] for r in records if r["policy_revision"] == old} <= set(events)
    for record, event in joined:
        assert event["bundles"]["kamiwaza"]["revision"] == record["policy_revision"]

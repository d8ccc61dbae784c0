"""`kamiwaza audit reconcile` on a healthy gateway: only route decisions are
expected to have a gateway record; the guards query behind `GET /v1/models` is
an OPA event of another query, never reported as missing its record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from gateway.cli import main
from observability.audit_reader import decision_events, request_records
from tests.gateway_harness import start_gateway

pytestmark = pytest.mark.integration

FAST = {"audit_batch_interval_s": 0.05, "audit_fsync_interval_ms": 20}


async def test_models_listings_are_not_decisions_without_a_record(
    tmp_path: Path, fake_upstream: Any
) -> None:
    gw = await start_gateway(tmp_path, fake_upstream, settings_overrides=FAST)
    headers = {"Authorization": f"Bearer {gw.keys['acme']}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            for _ in range(2):
                async with http.get(gw.url("/v1/models")) as resp:
                    assert resp.status == 200
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(gw.url("/v1/chat/completions"), json=body) as resp:
                assert resp.status == 200
    finally:
        await gw.close()  # OPA stops first and flushes its decision log to the gateway
    events = decision_events(str(gw.audit_dir))
    paths = sorted({event["path"] for event in events})
    # The gateway reads the policy's revision once at start-up (GET /v1/data/...).
    assert paths == [
        "kamiwaza/guards/refusals",
        "kamiwaza/policy/revision",
        "kamiwaza/route/decision",
    ]
    (record,) = request_records(str(gw.audit_dir))
    result = CliRunner().invoke(main, ["audit", "reconcile", str(gw.audit_dir), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    guard_events = sum(event["path"] == "kamiwaza/guards/refusals" for event in events)
    assert guard_events == 2 * 4  # one guards query per operation, per listing
    other_events = len(events) - 1  # all but the route decision
    assert report == {
        "records": 1,
        "events": 1,
        "other_events": other_events,
        "records_without_event": [],
        "events_without_record": [],
        "pending": [],
    }
    assert record["decision_id"] == next(
        e["decision_id"] for e in events if e["path"] == "kamiwaza/route/decision"
    )
    table = CliRunner().invoke(main, ["audit", "reconcile", str(gw.audit_dir)])
    assert table.exit_code == 0, table.output
    assert table.output.splitlines()[:2] == [
        "1 decided request record(s), 1 OPA route decision event(s)"
        f" ({other_events} event(s) of other queries, e.g. GET /v1/models, not counted)",
        "records without an OPA event: 0",
    ]

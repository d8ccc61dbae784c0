"""The embedded console in a real browser: real traffic through a gateway (real
OPA sidecar, fake upstreams), then what headless Chromium shows is checked
against the audit records of that traffic and against `kamiwaza stats`; a
key without the admin role is refused, in the page and by the API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from selenium.webdriver.common.by import By

from gateway.cli import main
from gateway.console import chart_library
from gateway.console.access import is_loopback
from observability.stats import compute
from tests.console_browser import Page, chromium
from tests.gateway_harness import (
    ENDPOINT_NAMES,
    EXAMPLE_OVERRIDES,
    Gateway,
    start_gateway,
    token_of,
)

pytestmark = pytest.mark.integration

BODY = {"model": "m", "messages": [{"role": "user", "content": "console canary prompt"}]}


@pytest.fixture
async def gw(tmp_path: Path, fake_upstream: Any, opa_bin: str) -> AsyncIterator[Gateway]:
    # The example override is enabled: the console shows one of its denies.
    gateway = await start_gateway(
        tmp_path, fake_upstream, settings_overrides={"overrides_dirs": [EXAMPLE_OVERRIDES]}
    )
    yield gateway
    await gateway.close()


async def send(
    http: aiohttp.ClientSession,
    gw: Gateway,
    tenant: str,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> tuple[int, str]:
    auth = {"Authorization": f"Bearer {gw.keys[tenant]}", **(headers or {})}
    async with http.post(gw.url("/v1/chat/completions"), json=body or BODY, headers=auth) as resp:
        await resp.read()
        return resp.status, resp.headers["X-Request-Id"]


async def traffic(gw: Gateway) -> dict[str, str]:
    """Every kind of request the console shows; returns request ids by kind."""
    ids: dict[str, str] = {}
    async with aiohttp.ClientSession() as http:
        for n in range(3):
            ids[f"default-{n}"] = (await send(http, gw, "acme"))[1]
        ids["stream"] = (await send(http, gw, "acme", body={**BODY, "stream": True}))[1]
        ids["pii"] = (await send(http, gw, "acme", {"X-Data-Class": "pii-restricted"}))[1]
        ids["budget"] = (await send(http, gw, "acme", {"X-Latency-Budget-Ms": "300"}))[1]
        ids["cost"] = (await send(http, gw, "globex", {"X-Cost-Cap-Per-1k": "0.001"}))[1]
        gw.upstreams["private-gpu"].fail(503)
        ids["failover"] = (await send(http, gw, "hospital"))[1]
        ids["denied"] = (await send(http, gw, "globex", {"X-Labels": "export_control=embargoed"}))[
            1
        ]
        ids["refused"] = (await send(http, gw, "limited", {"X-Data-Class": "confidential"}))[1]
    return ids


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


async def test_the_console_shows_what_the_audit_records_say(gw: Gateway) -> None:
    assert chart_library(None) is not None, "Chart.js is not installed: run `make setup` (npm ci)"
    ids = await traffic(gw)
    records = await gw.audit_records()
    by_id = {r["request_id"]: r for r in records}
    assert sorted(by_id) == sorted(ids.values())
    assert by_id[ids["failover"]]["endpoint"] == "private-gpu-b"
    stats = CliRunner().invoke(
        main, ["stats", str(gw.audit_dir), "--since", "1h", "--format", "json"]
    )
    assert stats.exit_code == 0, stats.output
    expected = json.loads(stats.stdout)
    # `kamiwaza stats` read exactly these records (the spool's and the sink's).
    now = datetime.now(UTC)
    assert compute(records, now - timedelta(hours=1), now)["endpoints"] == expected["endpoints"]

    # The browser blocks while the gateway, on this event loop, answers it.
    await asyncio.to_thread(_check_page, gw, ids, records, expected)


def _check_page(
    gw: Gateway, ids: dict[str, str], records: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    by_id = {r["request_id"]: r for r in records}
    url = gw.url("/console")
    with chromium() as driver:
        page = Page(driver, url)
        # -- a key without the admin role is refused --------------------------------
        page.sign_in(gw.keys["acme"])
        page.wait(lambda d: page.by_testid("signin-error").is_displayed())
        assert page.text("signin-error") == (
            "Refused: the console is for administrators: this credential (tenant "
            "enterprise-acme) has no 'admin' role (its roles: analyst)"
        )
        assert not driver.find_element(By.ID, "app").is_displayed()
        page.sign_in("kw_0123456789abcdef_" + "x" * 43)
        page.wait(lambda d: page.text("signin-error").startswith("That key is not valid"))

        # -- overview -----------------------------------------------------------------
        page.sign_in(gw.keys["globex"])  # roles dev, admin
        page.wait(lambda d: page.text("kpi-requests") == str(len(records)))
        driver.find_element(By.ID, "auto").click()  # no refresh while the test reads
        assert page.text("who") == "globex / u-2 (dev, admin)"
        assert page.text("kpi-error-rate") == _pct(expected["error_rate"])
        plural = "" if expected["errors"] == 1 else "s"
        assert page.text("kpi-errors") == f"{expected['errors']} error{plural} (status >= 400)"
        assert page.text("kpi-cost") == f"{sum(t['cost_usd'] for t in expected['tenants']):.6f}"
        tokens_in = sum(r["tokens"]["input"] for r in records)
        tokens_out = sum(r["tokens"]["output"] for r in records)
        assert page.text("kpi-tokens") == f"{tokens_in} / {tokens_out}"
        revision = records[0]["policy_revision"]
        assert revision.startswith("sha256:")
        assert page.text("kpi-revision") == revision
        endpoints = page.table("endpoints", "data-endpoint")
        assert isinstance(endpoints, dict)
        assert sorted(endpoints) == sorted({*ENDPOINT_NAMES, "none"})
        for row in expected["endpoints"]:
            cells = endpoints[row["endpoint"]]
            assert cells[2:] == [
                str(row["requests"]),
                str(row["errors"]),
                _pct(row["error_rate"]),
                _ms(row["p50_ms"]),
                _ms(row["p95_ms"]),
                _ms(row["p99_ms"]),
                _ms(row["ttft_p50_ms"]),
                _ms(row["ttft_p95_ms"]),
                _ms(row["ttft_p99_ms"]),
                str(row["failovers"]),
            ], row["endpoint"]
        assert endpoints["private-gpu"][1] == "circuit closed"  # one failure of five
        assert endpoints["none"][1] == "refused before routing"
        assert endpoints["private-gpu"][-1] == "1"  # left once, for private-gpu-b
        tenants = page.table("tenants", "data-tenant")
        assert tenants == {
            t["tenant"]: [
                t["tenant"],
                str(t["requests"]),
                str(t["input_tokens"]),
                str(t["output_tokens"]),
                f"{t['cost_usd']:.6f}",
            ]
            for t in expected["tenants"]
        }
        rules = page.table("rules", "data-rule")
        assert {name: cells[1] for name, cells in rules.items()} == {  # type: ignore[union-attr]
            r["rule"]: str(r["requests"]) for r in expected["rules"]
        }
        assert page.table("failovers") == [["private-gpu", "upstream_unavailable", "1"]]
        # Chart.js (installed by make setup) drew every chart.
        assert driver.execute_script("return typeof window.Chart") == "function"
        assert not driver.find_element(By.ID, "charts-missing").is_displayed()
        drawn = driver.execute_script(
            "return [...document.querySelectorAll('canvas')]"
            ".map(c => [c.id, Boolean(window.Chart.getChart(c))])"
        )
        assert drawn == [[name, True] for name in (
            "chart-series", "chart-latency", "chart-ttft", "chart-cost", "chart-rules",
            "chart-models",
        )]  # fmt: skip
        series = driver.execute_script(
            "const c = window.Chart.getChart(document.getElementById('chart-series'));"
            "return c.data.datasets.map(d => d.data.reduce((a, b) => a + b, 0))"
        )
        assert series == [len(records) - expected["errors"], expected["errors"]]

        # -- a filter: the page shows what `kamiwaza stats --tenant globex` shows ------
        page.driver.find_element(By.ID, "f-tenant").send_keys("globex")
        page.driver.find_element(By.ID, "apply").click()
        page.wait(lambda d: page.text("kpi-requests") == "2")
        page.driver.find_element(By.ID, "f-tenant").clear()
        page.driver.find_element(By.ID, "apply").click()
        page.wait(lambda d: page.text("kpi-requests") == str(len(records)))

        # -- recent requests and one request's decision --------------------------------
        page.tab("requests")
        page.wait(
            lambda d: (
                len(d.find_elements(By.CSS_SELECTOR, "#requests tr[data-request-id]"))
                == len(records)
            )
        )
        shown = page.table("requests", "data-request-id")
        assert isinstance(shown, dict)
        newest_first = sorted(records, key=lambda r: r["timestamp"], reverse=True)
        rendered_ids = [
            row.get_attribute("data-request-id")
            for row in driver.find_elements(By.CSS_SELECTOR, "#requests tr[data-request-id]")
        ]
        assert rendered_ids == [r["request_id"] for r in newest_first]
        for record in records:
            cells = shown[record["request_id"]]
            rule = (
                f"override:{record['overridden_by']}"
                if record["overridden_by"]
                else (record["rule"] or {}).get("name", "none")
            )
            assert cells[1:8] == [
                record["request_id"],
                record["tenant"],
                record["data_class"] or "none",
                rule,
                record["endpoint"] or "none",
                str(record["status"]),
                f"{record['latency_ms']['total']:.1f}",
            ]
            assert cells[8] == f"{record['tokens']['input']} / {record['tokens']['output']}"
        failover = by_id[ids["failover"]]
        driver.find_element(By.CSS_SELECTOR, f'tr[data-request-id="{ids["failover"]}"]').click()
        page.wait(lambda d: page.text("detail-request-id") == ids["failover"])
        assert page.text("detail-endpoint") == "private-gpu-b"
        assert page.text("detail-data-class") == "pii-restricted"  # the tenant's floor
        assert page.text("detail-rule") == "pii-on-prem (" + failover["rule"]["source"] + ")"
        assert page.text("detail-fallback") == "private-gpu-b"
        assert page.table("detail-conditions") == [
            [c["field"], c["op"], json.dumps(c["expected"]), json.dumps(c["actual"]),
             "holds" if c["result"] else "fails"]
            for c in failover["conditions"]
        ]  # fmt: skip
        assert page.table("detail-attempts") == [
            [str(i), a["endpoint"], str(a["status"]), a["error"] or "ok", f"{a['latency_ms']:.1f}"]
            for i, a in enumerate(failover["attempts"], start=1)
        ]
        assert [row[1] for row in page.table("detail-attempts")] == ["private-gpu", "private-gpu-b"]  # type: ignore[index]
        denied = by_id[ids["denied"]]
        driver.find_element(By.CSS_SELECTOR, f'tr[data-request-id="{ids["denied"]}"]').click()
        page.wait(lambda d: page.text("detail-request-id") == ids["denied"])
        assert page.text("detail-status") == "403"
        assert page.text("detail-deny").splitlines() == denied["deny"]
        assert page.text("detail-attempts") == "nothing was sent upstream"
        page.driver.find_element(By.ID, "search").send_keys(ids["cost"])
        page.driver.find_element(By.CSS_SELECTOR, "#search-form button").click()
        page.wait(lambda d: page.text("requests-count") == "1 request(s)")

        # -- policy and registry, without secrets ---------------------------------------
        page.tab("policy")
        page.wait(lambda d: page.text("policy-revision") == revision)
        policy_text = (gw.workdir / "routing.yaml").read_text()
        shown_yaml = driver.execute_script(
            "return document.querySelector('[data-testid=\"policy-yaml\"]').textContent"
        )
        assert shown_yaml == policy_text
        registry = page.table("registry", "data-endpoint")
        assert isinstance(registry, dict)
        assert sorted(registry) == sorted(ENDPOINT_NAMES)
        assert registry["private-gpu"][7] == "bearer_token_env: PRIVATE_GPU_TOKEN"
        assert registry["private-gpu"][2] == "yes"
        source = driver.page_source
        for secret in (*(token_of(n) for n in ENDPOINT_NAMES), "console canary prompt"):
            assert secret not in source


async def test_the_api_refuses_without_an_admin_credential(gw: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/console/api/overview", "/console/api/requests", "/console/api/policy"):
            async with http.get(gw.url(path)) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "missing_credential"
            headers = {"Authorization": f"Bearer {gw.keys['acme']}"}
            async with http.get(gw.url(path), headers=headers) as resp:
                assert resp.status == 403
                assert (await resp.json())["error"]["code"] == "console_admin_required"
        admin = {"Authorization": f"Bearer {gw.keys['globex']}"}
        for query, message in (
            ("since=yesterday", "window: 'yesterday' is neither a time"),
            ("since=1h&until=2h", "window: since (1h) must be before until (2h)"),
            ("status=oops", "status: 'oops': expected a status"),
            ("limit=0", "limit: expected a number from 1 to 1000, got '0'"),
        ):
            async with http.get(gw.url(f"/console/api/requests?{query}"), headers=admin) as resp:
                assert resp.status == 400, query
                assert (await resp.json())["error"]["message"].startswith(message)
        async with http.get(gw.url("/console/api/requests/req-nope"), headers=admin) as resp:
            assert resp.status == 404
        async with http.get(gw.url("/console"), headers=admin) as resp:
            assert resp.status == 200
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        async with http.get(gw.url("/console/lib/chart.js")) as resp:
            assert resp.status == 200
            assert (await resp.read()).startswith(b"/*!\n * Chart.js v4.")


async def test_the_console_can_be_turned_off(tmp_path: Path, fake_upstream: Any) -> None:
    gw = await start_gateway(tmp_path, fake_upstream, settings_overrides={"console": "off"})
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/console", "/console/api/overview"):
                async with http.get(
                    gw.url(path), headers={"Authorization": f"Bearer {gw.keys['globex']}"}
                ) as resp:
                    assert resp.status == 404
    finally:
        await gw.close()


@pytest.mark.parametrize(
    ("remote", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        (None, True),  # a unix socket
        ("192.0.2.10", False),
        ("10.0.0.5", False),
        ("::ffff:192.0.2.10", False),
        ("fe80::1%eth0", False),
        ("not an address", False),
    ],
)
def test_loopback_clients(remote: str | None, loopback: bool) -> None:
    assert is_loopback(remote) is loopback

"""docs/openapi.yaml describes the gateway's API, and schemathesis holds the
gateway to it: every route is documented, and generated requests (valid and
invalid) get only documented statuses (never a 500), content types and bodies.
Bounded examples and a fixed seed keep the run short and repeatable."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gateway_harness import ROOT, start_gateway

pytestmark = pytest.mark.integration

DOCUMENT = ROOT / "docs" / "openapi.yaml"
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


def test_every_route_is_documented(tmp_path: Path) -> None:
    from gateway.app import create_app
    from gateway.auth import KeyStore
    from gateway.settings import load_settings

    KeyStore.load(tmp_path / "keys.json", missing_ok=True).create(tenant="t")
    settings = load_settings(
        overrides={
            "policy": str(ROOT / "policies" / "routing.yaml"),
            "audit_dir": str(tmp_path / "audit"),
            "rego_dir": str(ROOT / "rego"),
            "keys": str(tmp_path / "keys.json"),
            "allow_unconfigured_endpoints": True,
        },
        environ={},
    )
    app = create_app(settings, environ={})
    routes = {
        (route.method, route.resource.canonical.replace("{model:.+}", "{model}"))
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    paths = yaml.safe_load(DOCUMENT.read_text())["paths"]
    documented = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    assert routes == documented


async def test_schemathesis_finds_nothing_against_a_running_gateway(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> None:
    gw = await start_gateway(tmp_path, fake_upstream)
    try:
        proc = await asyncio.create_subprocess_exec(
            SCHEMATHESIS,
            "run",
            str(DOCUMENT),
            "--url",
            gw.url("/").rstrip("/"),
            "--header",
            f"Authorization: Bearer {gw.keys['globex']}",  # roles dev, admin
            # No 500 is documented: status_code_conformance is the no-500 check
            # (not_a_server_error would also count the documented 502-504).
            "--checks",
            "status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,fuzzing,stateful",
            "--max-examples",
            "15",
            "--seed",
            "17",
            "--generation-database",
            "none",
            "--workers",
            "2",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            "--no-color",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,  # its cache (.schemathesis/) stays out of the checkout
        )
        output, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await gw.close()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "Tested: 20" in text and " passed" in text

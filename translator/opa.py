"""Finding and running the OPA binary for `opa test` and `opa eval`.

The binary is located through one setting, `KAMIWAZA_OPA_BIN`; without it, the
project's `.tools/bin/opa` (where `scripts/install-opa.sh` puts the pinned
version) and then `opa` on PATH are used.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from translator.errors import OpaError

OPA_BIN_ENV = "KAMIWAZA_OPA_BIN"
PINNED_VERSION = "v1.22.2"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def find_opa() -> str:
    """Path of the OPA binary to use, or :class:`OpaError` saying how to get one."""
    configured = os.environ.get(OPA_BIN_ENV)
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise OpaError(f"{OPA_BIN_ENV}={configured} is not an executable file")
        return configured
    for candidate in (Path.cwd() / ".tools/bin/opa", PROJECT_ROOT / ".tools/bin/opa"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    on_path = shutil.which("opa")
    if on_path:
        return on_path
    raise OpaError(
        f"OPA not found: set {OPA_BIN_ENV}, or run scripts/install-opa.sh to build "
        f"OPA {PINNED_VERSION} into .tools/bin"
    )


def default_rego_dir() -> str:
    """The hand-written Rego (entry point, guards, overrides) to load beside a policy."""
    for candidate in (Path.cwd() / "rego", PROJECT_ROOT / "rego"):
        if (candidate / "kamiwaza" / "route").is_dir():
            return str(candidate)
    raise OpaError("cannot find the rego/ directory; pass --rego DIR")


def _run(
    args: Sequence[str], *, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [find_opa(), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise OpaError(f"running opa {args[0]} failed: {err}") from err


@dataclass(frozen=True, slots=True)
class TestOutcome:
    package: str
    name: str
    location: str
    passed: bool
    error: str | None
    output: str  # what the test printed (our compiled tests print expected vs actual)


def run_tests(paths: Sequence[str]) -> list[TestOutcome]:
    """`opa test` over `paths`; raises :class:`OpaError` when OPA cannot load them."""
    proc = _run(["test", "--format", "json", *paths])
    try:
        results = json.loads(proc.stdout or "null")
    except json.JSONDecodeError:
        results = None
    if not isinstance(results, list):
        raise OpaError((proc.stderr or proc.stdout).strip() or "opa test gave no results")
    outcomes = []
    for r in results:
        loc = r.get("location") or {}
        err = r.get("error")
        # `opa test --format json` base64-encodes what a test printed.
        output = _decode_output(r.get("output") or "")
        outcomes.append(
            TestOutcome(
                package=r.get("package", ""),
                name=r.get("name", ""),
                location=f"{loc.get('file', '?')}:{loc.get('row', '?')}",
                passed=not r.get("fail") and not err,
                error=(err.get("message") if isinstance(err, dict) else str(err)) if err else None,
                output=output,
            )
        )
    return outcomes


def _decode_output(raw: str) -> str:
    try:
        return base64.b64decode(raw).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return raw


def evaluate(paths: Sequence[str], query: str, input_doc: dict[str, Any]) -> Any:
    """`opa eval` of `query` with `input_doc`; returns the value, or None if undefined."""
    args = ["eval", "--format", "json", "--stdin-input"]
    for path in paths:
        args += ["--data", path]
    proc = _run([*args, query], stdin=json.dumps(input_doc))
    if proc.returncode != 0:
        raise OpaError((proc.stderr or proc.stdout).strip())
    doc = json.loads(proc.stdout)
    results = doc.get("result") or []
    if not results:
        return None
    return results[0]["expressions"][0]["value"]

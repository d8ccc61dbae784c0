"""The Helm chart as the tests render it: `helm template` with values, parsed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "kamiwaza"
KUBE_VERSION = "1.33.0"  # the schemas the manifests are validated against


def find_helm() -> str:
    """helm: KAMIWAZA_HELM_BIN, .tools/bin (scripts/install-helm.sh), PATH."""
    for candidate in (
        os.environ.get("KAMIWAZA_HELM_BIN"),
        str(ROOT / ".tools" / "bin" / "helm"),
        shutil.which("helm"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("helm is not installed: run scripts/install-helm.sh")


def _values_args(values: dict[str, Any], tmp: Path) -> list[str]:
    path = tmp / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["--values", str(path)]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_helm(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render(values: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    """`helm template` of the chart with `values`: every manifest, parsed."""
    proc = helm(
        "template", "kamiwaza", str(CHART), "--kube-version", KUBE_VERSION,
        *_values_args(values, tmp),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def lint(values: dict[str, Any], tmp: Path) -> subprocess.CompletedProcess[str]:
    return helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION,
                *_values_args(values, tmp))  # fmt: skip


def manifest(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [
        d
        for d in docs
        if d["kind"] == kind and not d["metadata"]["name"].endswith("-policy-bundle")
    ]
    return found


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec = manifest(docs, "Deployment")["spec"]["template"]["spec"]
    (found,) = [c for c in spec["containers"] if c["name"] == name]
    return found


def config_files(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The chart's ConfigMap: the gateway's config.yaml and OPA's config, parsed."""
    data = manifest(docs, "ConfigMap")["data"]
    return {
        "gateway": yaml.safe_load(data["config.yaml"]),
        "opa": yaml.safe_load(data["opa-config.yaml"]),
        "data": data,
    }

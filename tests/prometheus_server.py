"""A real Prometheus server with its OTLP receiver on a free loopback port."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.processes import start_on_free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "observability" / "prometheus" / "prometheus.yml"


def find_prometheus() -> str:
    """KAMIWAZA_PROMETHEUS_BIN, else .tools/bin/prometheus, else `prometheus` on PATH."""
    candidates = [os.environ.get("KAMIWAZA_PROMETHEUS_BIN"), str(ROOT / ".tools/bin/prometheus")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("prometheus")
    if found:
        return found
    raise RuntimeError(
        "Prometheus is not installed: run `make setup` or scripts/install-prometheus.sh"
    )


class PrometheusServer:
    """Prometheus on 127.0.0.1 with the repository's config (less its scrape
    jobs, which would reach for ports of other processes) and its OTLP receiver."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "prometheus.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def otlp_url(self) -> str:
        """The base URL for an OTLP/HTTP exporter (it appends /v1/metrics)."""
        return f"{self.url}/api/v1/otlp"

    def start(self, timeout: float = 60.0) -> None:
        config = yaml.safe_load(CONFIG.read_text())
        config.pop("scrape_configs", None)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.proc, self.port = start_on_free_port(
            lambda port, attempt: [
                find_prometheus(),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / f'data-{attempt}'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-otlp-receiver",
                "--log.level=warn",
            ],
            ready_path="/-/ready",
            log_path=self.log_path,
            failure="Prometheus did not become ready",
            timeout=timeout,
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            doc = json.loads(resp.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at now: the result vector (or a one-element list for a scalar)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def values(self, expr: str, *by: str) -> dict[tuple[str, ...], float]:
        """{(label values of `by`...): value} of an instant query."""
        out: dict[tuple[str, ...], float] = {}
        for sample in self.query(expr):
            key = tuple(sample["metric"].get(name, "") for name in by)
            assert key not in out, f"{expr}: two series for {key}"
            out[key] = float(sample["value"][1])
        return out

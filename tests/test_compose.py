"""The docker-compose stack, Grafana provisioning and collector config, checked
for structure (Docker does not run here): services, health checks, mounts that
exist in the repository, ports, images pinned by version."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import Settings
from gateway.sidecar import go_runtime_env

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
ONE_SHOT = {"policy", "minio-init"}  # run to completion; others stay up
# The collector image has no shell or HTTP client to run a Docker health check.
NO_HEALTHCHECK = {"otel-collector"}


def test_the_stack_has_every_service() -> None:
    assert set(SERVICES) == {
        "policy",
        "opa",
        "gateway",
        "otel-collector",
        "prometheus",
        "grafana",
        "minio",
        "minio-init",
    }


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_images_are_pinned_by_version(name: str) -> None:
    service = SERVICES[name]
    image = service["image"]
    repo, _, tag = image.rpartition(":")
    assert repo and tag, image
    assert tag != "latest" and not tag.startswith(("latest", "edge", "main"))
    assert re.search(r"\d+\.\d+|\d{4}-\d{2}-\d{2}", tag), f"{image}: not a version tag"
    if "build" in service:
        assert service["build"] == "."
        assert (ROOT / "Dockerfile").is_file()


@pytest.mark.parametrize("name", sorted(set(SERVICES) - ONE_SHOT - NO_HEALTHCHECK))
def test_long_running_services_have_health_checks(name: str) -> None:
    check = SERVICES[name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert {"interval", "timeout", "retries"} <= set(check)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_bind_mounts_exist_in_the_repository(name: str) -> None:
    named = set(COMPOSE.get("volumes") or {})
    for volume in SERVICES[name].get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("."):
            assert (ROOT / source).exists(), f"{name}: {source} is not in the repository"
        else:
            assert source in named, f"{name}: volume {source} is not declared"


def test_dependencies_wait_for_health_or_completion() -> None:
    for name, service in SERVICES.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in SERVICES, (name, dependency)
            expected = (
                "service_completed_successfully"
                if dependency in ONE_SHOT
                else "service_started"
                if dependency in NO_HEALTHCHECK
                else "service_healthy"
            )
            assert condition["condition"] == expected, (name, dependency)


def test_the_opa_service_runs_with_the_sidecars_go_settings() -> None:
    defaults = Settings()
    assert COMPOSE["services"]["opa"]["environment"] == go_runtime_env(
        defaults.opa_gomaxprocs, defaults.opa_gogc
    )


def test_ports_are_published_on_loopback() -> None:
    published = {}
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            host, host_port, container_port = port.split(":")
            assert host == "127.0.0.1", port
            published[int(host_port)] = (name, int(container_port))
    assert published == {
        8080: ("gateway", 8080),
        3000: ("grafana", 3000),
        9090: ("prometheus", 9090),
        9000: ("minio", 9000),
        9001: ("minio", 9001),
    }


def test_the_gateway_exports_metrics_to_the_collector_and_audit_to_the_store() -> None:
    env = SERVICES["gateway"]["environment"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert env["KAMIWAZA_OPA_URL"] == "http://opa:8181"
    assert env["KAMIWAZA_AUDIT_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "./policies:/app/policies:ro" in SERVICES["gateway"]["volumes"]
    assert "--web.enable-otlp-receiver" in SERVICES["prometheus"]["command"]


def test_the_collector_pipeline_forwards_to_prometheus() -> None:
    config = yaml.safe_load((ROOT / "observability/otel-collector/config.yaml").read_text())
    pipeline = config["service"]["pipelines"]["metrics"]
    for kind in ("receivers", "processors", "exporters"):
        for component in pipeline[kind]:
            assert component in config[kind], (kind, component)
    assert set(config["service"]["extensions"]) <= set(config["extensions"])
    exporter = config["exporters"][pipeline["exporters"][0]]
    assert exporter["metrics_endpoint"] == "http://prometheus:9090/api/v1/otlp/v1/metrics"
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")


def test_grafana_provisioning_points_at_the_mounted_dashboards() -> None:
    grafana = SERVICES["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    dashboards_at = mounts["./observability/grafana/dashboards"]
    provider = yaml.safe_load(
        (ROOT / "observability/grafana/provisioning/dashboards/kamiwaza.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] == dashboards_at
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_at + "/")
    assert (ROOT / "observability/grafana/dashboards" / Path(home).name).is_file()
    datasource = yaml.safe_load(
        (ROOT / "observability/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    for path in (ROOT / "observability/grafana/dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["current"]["value"] == datasource["uid"]
        uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
        assert uids == {"${datasource}"}, path.name


def test_the_dockerfile_copies_what_exists() -> None:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), line

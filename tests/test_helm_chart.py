"""The Helm chart (deploy/helm/kamiwaza): `helm lint`, `helm template` for S3, GCS,
HTTPS and ConfigMap bundles with and without the HPA, every manifest validated
against the Kubernetes schemas (kubernetes-validate, strict: no unknown field),
the pod hardened as the chart README says, and the OPA config in its ConfigMap
exactly what gateway/policy_source.py produces for the same settings."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.policy_source import BundleSource, merge_configs, opa_bundle_config
from gateway.settings import load_settings
from observability.decision_log import opa_decision_log_config
from tests.bundle_helpers import rsa_key_pair
from tests.helm import (
    CHART,
    KUBE_VERSION,
    config_files,
    container,
    helm,
    kinds,
    lint,
    manifest,
    render,
)

REGISTRY = """\
endpoints:
  private-gpu:
    type: openai-compatible
    base_url: http://vllm.inference.svc:8000/v1
    model: llama
    in_vpc: true
    auth: {bearer_token_env: PRIVATE_GPU_TOKEN}
"""

S3 = {
    "bundle": {"url": "s3://acme-policy/prod/kamiwaza/bundle.tar.gz", "region": "eu-west-1",
               "credentials": "web_identity"},
    "serviceAccount": {"annotations": {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/kamiwaza-policy"}},
}  # fmt: skip
S3_COMPATIBLE = {
    "bundle": {"url": "s3://policy/kamiwaza.tar.gz", "region": "us-east-1",
               "endpointUrl": "http://minio.storage:9000/"},
    "opa": {"envFrom": [{"secretRef": {"name": "minio-credentials"}}]},
}  # fmt: skip
GCS = {
    "bundle": {"url": "gs://acme-policy/prod/kamiwaza/bundle.tar.gz",
               "polling": {"minDelaySeconds": 5, "maxDelaySeconds": 15}},
    "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
}  # fmt: skip
HTTPS = {
    "bundle": {"url": "https://bundles.example.com/kamiwaza/bundle.tar.gz?v=1",
               "credentials": "token_file", "tokenSecret": {"name": "bundle-token"}},
}  # fmt: skip
CONFIGMAP = {
    "bundle": {"configMap": {"bundleBase64": base64.b64encode(b"\x1f\x8b fake").decode()}},
    "podDisruptionBudget": {"enabled": False},
}
COMMON = {
    "endpoints": REGISTRY,
    "apiKeys": {"secretName": "kamiwaza-keys"},
    "providerCredentials": [
        {"env": "PRIVATE_GPU_TOKEN", "secretName": "provider-keys", "secretKey": "private-gpu"}
    ],
    "otlp": {"endpoint": "http://otel-collector.monitoring:4318"},
    "gateway": {"config": {"audit_sink": "s3", "audit_s3_bucket": "acme-audit"}},
}
VALUE_SETS = {
    "s3": S3,
    "s3-compatible": S3_COMPATIBLE,
    "gcs": GCS,
    "https": HTTPS,
    "configmap": CONFIGMAP,
}


def _values(name: str, public_key: str | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {**COMMON, **VALUE_SETS[name]}
    if public_key is not None:
        values["bundle"] = {**values["bundle"], "verification": {"publicKey": public_key}}
    return values


@pytest.fixture(scope="module")
def public_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    return rsa_key_pair(tmp_path_factory.mktemp("keys"), "signer").public.read_text()


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_and_schema_validation(name: str, tmp_path: Path, public_key: str) -> None:
    values = _values(name, public_key if name in ("s3", "configmap") else None)
    proc = lint(values, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docs = render(values, tmp_path)
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a CRD: not in the Kubernetes schemas
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    expected = ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    if name == "gcs":
        expected += ["HorizontalPodAutoscaler", "ServiceMonitor"]
    if name == "configmap":
        expected += ["ConfigMap"]  # the bundle itself
        expected.remove("PodDisruptionBudget")
    assert kinds(docs) == sorted(expected)


def test_hpa_on_and_off(tmp_path: Path) -> None:
    off = render(_values("s3"), tmp_path)
    assert manifest(off, "Deployment")["spec"]["replicas"] == 2
    assert "HorizontalPodAutoscaler" not in kinds(off)
    on = render(_values("gcs"), tmp_path)
    assert "replicas" not in manifest(on, "Deployment")["spec"]
    hpa = manifest(on, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "kamiwaza",
    }
    monitor = manifest(on, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [
        {"port": "opa-metrics", "path": "/metrics", "interval": "30s"}
    ]


def test_pod_is_hardened_probed_and_drains(tmp_path: Path) -> None:
    docs = render(_values("s3"), tmp_path)
    pod = manifest(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (user,) = [line for line in (CHART.parents[2] / "Dockerfile").read_text().splitlines()
               if line.startswith("USER ")]  # fmt: skip
    assert user == "USER 10001:10001"  # numeric: runAsNonRoot can check it
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        10001,
        10001,
    )
    gateway, opa = container(docs, "gateway"), container(docs, "opa")
    for c in (gateway, opa):
        assert c["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert set(c["resources"]["requests"]) == {"cpu", "memory"}
        assert c["livenessProbe"]["httpGet"]["path"] in ("/healthz", "/health")
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert opa["readinessProbe"]["httpGet"] == {"path": "/health?bundles", "port": "opa-metrics"}
    # The drain: the gateway waits for the Service to let go, then drains for
    # drain_timeout_s; OPA outlives both; the grace period covers the flush.
    assert gateway["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert opa["lifecycle"]["preStop"] == {"sleep": {"seconds": 5 + 30 + 5}}
    assert pod["terminationGracePeriodSeconds"] == 5 + 30 + 5 + 15
    # OPA's API on loopback only; probes and metrics on the diagnostic port.
    assert "--addr=127.0.0.1:8181" in opa["args"]
    assert "--diagnostic-addr=0.0.0.0:8282" in opa["args"]
    # Credentials only from existing Secrets.
    assert gateway["env"][1] == {
        "name": "PRIVATE_GPU_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "provider-keys", "key": "private-gpu"}},
    }
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in opa["env"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["api-keys"] == {"name": "api-keys", "secret": {"secretName": "kamiwaza-keys"}}
    sa = manifest(docs, "ServiceAccount")["metadata"]["annotations"]
    assert sa == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/kamiwaza-policy"}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_chart_opa_config_is_the_gateways_for_the_same_settings(
    name: str, tmp_path: Path, public_key: str
) -> None:
    """One definition of the OPA bundle config: the chart renders what
    opa_bundle_config() gives for the settings in the chart's config.yaml."""
    signed = name in ("s3", "gcs")
    rendered = config_files(render(_values(name, public_key if signed else None), tmp_path))
    gateway_config = rendered["gateway"]
    if signed:  # the chart mounts its ConfigMap's copy of the key there
        assert rendered["data"]["bundle-key.pem"].strip() == public_key.strip()
        key_file = tmp_path / "bundle-key.pem"
        key_file.write_text(rendered["data"]["bundle-key.pem"])
        gateway_config["bundle_verification_key"] = str(key_file)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(gateway_config))
    settings = load_settings(str(config_path), environ={})
    assert settings.policy_source == "bundle"
    assert settings.opa_url == "http://127.0.0.1:8181"
    assert (settings.audit_decision_logs, settings.audit_decision_logs_port) == (True, 8182)
    token = settings.audit_decision_logs_token_file
    assert token == "/run/kamiwaza/decision-logs/token"
    expected = merge_configs(
        opa_decision_log_config("http://127.0.0.1:8182/opa", token_path=token),
        opa_bundle_config(BundleSource.from_settings(settings)),
    )
    if signed:  # the chart's key text, trailing newline aside
        key = expected["keys"]["kamiwaza-bundle"]
        key["key"] = key["key"].strip()
        rendered["opa"]["keys"]["kamiwaza-bundle"]["key"] = rendered["opa"]["keys"][
            "kamiwaza-bundle"
        ]["key"].strip()
    assert rendered["opa"] == expected


def test_configmap_mode_mounts_the_bundle_for_opa(tmp_path: Path) -> None:
    docs = render(_values("configmap"), tmp_path)
    bundle_map = [d for d in docs if d["metadata"]["name"] == "kamiwaza-policy-bundle"]
    assert bundle_map[0]["binaryData"] == {"bundle.tar.gz": CONFIGMAP["bundle"]["configMap"][
        "bundleBase64"]}  # fmt: skip
    opa = container(docs, "opa")
    assert {"name": "policy-bundle", "mountPath": "/etc/kamiwaza/bundle", "readOnly": True} in opa[
        "volumeMounts"
    ]
    assert config_files(docs)["opa"]["bundles"]["kamiwaza"]["resource"] == (
        "file:///etc/kamiwaza/bundle/bundle.tar.gz"
    )


def test_a_bundle_source_is_required(tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump({**COMMON, "bundle": {"url": ""}}))
    proc = helm("template", "kamiwaza", str(CHART), "--kube-version", KUBE_VERSION,
                "--values", str(values_file))  # fmt: skip
    assert proc.returncode == 1
    assert "bundle.url (s3://, gs://, https://) or bundle.configMap" in proc.stderr


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(doc: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for key, value in doc.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and path not in _MAPS:
                out += leaves(value, path + ".")
            else:
                out.append(path)
        return out

    missing = [v for v in leaves(values) if f"`{v}`" not in readme]
    assert missing == []


# Values that are free-form mappings (documented as a whole).
_MAPS = {
    "gateway.resources",
    "opa.resources",
    "podSecurityContext",
    "securityContext",
}

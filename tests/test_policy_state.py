"""The replica's policy state without OPA: revisions and refusals as /readyz and
the metrics report them, OPA's errors as file:row:col, and the bundle settings
that are refused before OPA ever sees them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway.errors import StartupError
from gateway.policy_source import BundleSource, merge_configs, opa_bundle_config
from gateway.policy_state import PolicyState, format_opa_errors
from gateway.settings import SettingsError, load_settings
from observability.metrics import GatewayMetrics
from tests.test_metrics import collect


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def metrics(reader: InMemoryMetricReader) -> Iterator[GatewayMetrics]:
    gm = GatewayMetrics([reader])
    yield gm
    gm.shutdown()


def test_revision_and_refusals_reach_readyz_and_the_metrics(
    metrics: GatewayMetrics, reader: InMemoryMetricReader
) -> None:
    state = PolicyState("bundle")
    metrics.watch_policy(state.snapshot)
    got = collect(reader)
    assert got["kamiwaza.gateway.policy.revision"] == [
        ({"source": "bundle", "revision": "none"}, 0)
    ]
    state.refuse("bundle_error: server replied with Not Found")
    assert not state.ready
    state.activate("sha256:aaa")
    state.refuse("bundle_error: failed to verify JWT signature")
    doc = state.describe()
    assert doc == {
        "source": "bundle",
        "revision": "sha256:aaa",
        "active": True,
        "failures": 2,
        "activated_at": doc["activated_at"],
        "last_error": "bundle_error: failed to verify JWT signature",
    }
    assert state.ready
    got = collect(reader)
    assert got["kamiwaza.gateway.policy.revision"] == [
        ({"source": "bundle", "revision": "sha256:aaa"}, 1)
    ]
    assert got["kamiwaza.gateway.policy.refusals"] == [({"source": "bundle"}, 2)]
    state.activate("sha256:bbb")
    assert "last_error" not in state.describe()  # a new revision clears it


def test_opa_errors_are_rendered_as_file_row_col() -> None:
    status: dict[str, Any] = {
        "code": "bundle_error",
        "message": "error(s) occurred while compiling module(s)",
        "errors": [
            {
                "code": "rego_parse_error",
                "message": "unexpected eof token",
                "location": {"file": "kamiwaza/policy/policy.rego", "row": 38, "col": 1},
            }
        ],
    }
    assert format_opa_errors(status) == (
        "bundle_error: error(s) occurred while compiling module(s)\n"
        "kamiwaza/policy/policy.rego:38:1: unexpected eof token"
    )


def _source(**overrides: Any) -> BundleSource:
    settings = load_settings(overrides={"policy_source": "bundle", **overrides}, environ={})
    return BundleSource.from_settings(settings)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bundle_url": "ftp://x/y"}, "bundle_url: expected s3://bucket/key"),
        ({"bundle_url": "s3://bucket/"}, "names a bucket but no object"),
        ({"bundle_url": "s3://bucket/k.tar.gz"}, "bundle_region: required for an s3://"),
        ({"bundle_url": "gs://b/k.tar.gz", "bundle_credentials": "environment"},
         "bundle_credentials: expected one of gcp_metadata, token_file, none"),
        ({"bundle_url": "https://h/b.tar.gz", "bundle_credentials": "token_file"},
         "bundle_token_file: required"),
        ({"bundle_url": "http://10.0.0.1/b.tar.gz"}, "plain http is for loopback only"),
        ({"bundle_url": "gs://b/a b.tar.gz"}, "may use letters, digits"),
    ],
)  # fmt: skip
def test_bad_bundle_settings_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(StartupError, match=message):
        _source(**overrides)


def test_bundle_url_is_required_and_polling_ordered() -> None:
    with pytest.raises(SettingsError, match="bundle_url: required when policy_source is bundle"):
        load_settings(overrides={"policy_source": "bundle"}, environ={})
    with pytest.raises(SettingsError, match="bundle_poll_max_s: must not be below"):
        load_settings(overrides={"bundle_poll_min_s": 20, "bundle_poll_max_s": 10}, environ={})


def test_opa_config_per_source() -> None:
    s3 = opa_bundle_config(
        _source(bundle_url="s3://acme/p/b.tar.gz", bundle_region="eu-west-1",
                bundle_credentials="metadata", bundle_persist=False)
    )  # fmt: skip
    assert s3 == {
        "services": {
            "kamiwaza-bundles": {
                "url": "https://acme.s3.eu-west-1.amazonaws.com",
                "credentials": {
                    "s3_signing": {"metadata_credentials": {"aws_region": "eu-west-1"}}
                },
            }
        },
        "bundles": {
            "kamiwaza": {
                "service": "kamiwaza-bundles",
                "resource": "p/b.tar.gz",
                "persist": False,
                "polling": {"min_delay_seconds": 10, "max_delay_seconds": 30},
            }
        },
        "status": {"prometheus": True},
    }
    gcs = opa_bundle_config(_source(bundle_url="gs://acme/prod/kamiwaza/b.tar.gz"))
    assert gcs["services"]["kamiwaza-bundles"] == {
        "url": "https://storage.googleapis.com/storage/v1/b/acme/o",
        "credentials": {
            "gcp_metadata": {"scopes": ["https://www.googleapis.com/auth/devstorage.read_only"]}
        },
    }
    assert gcs["bundles"]["kamiwaza"]["resource"] == "prod%2Fkamiwaza%2Fb.tar.gz?alt=media"
    local = opa_bundle_config(_source(bundle_url="file:///etc/kamiwaza/bundle/b.tar.gz"))
    assert "services" not in local
    assert local["bundles"]["kamiwaza"]["resource"] == "file:///etc/kamiwaza/bundle/b.tar.gz"
    with pytest.raises(ValueError, match=r"services \['x'\] defined twice"):
        merge_configs({"services": {"x": {}}}, {"services": {"x": {}}})


def test_bundle_mode_checks_its_settings_at_start_up_even_with_an_external_opa(
    tmp_path: Any,
) -> None:
    from gateway.app import create_app

    (tmp_path / "endpoints.yaml").write_text(
        "endpoints:\n  gpu:\n    type: openai-compatible\n    base_url: http://127.0.0.1:9/v1\n"
    )
    settings = load_settings(
        overrides={
            "policy_source": "bundle",
            "bundle_url": "gs://bucket/k.tar.gz",
            "bundle_credentials": "web_identity",
            "opa_url": "http://127.0.0.1:8181",
            "policy": str(tmp_path / "absent.yaml"),  # bundle mode reads no policy file
            "keys": str(tmp_path / "keys.json"),
            "audit_dir": str(tmp_path / "audit"),
        },
        environ={},
    )
    with pytest.raises(StartupError, match="bundle_credentials: expected one of gcp_metadata"):
        create_app(settings, environ={})

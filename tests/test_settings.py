"""Settings: defaults, config file, environment and flags, and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Settings, SettingsError, load_settings


def test_defaults_run_the_example_policy() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.policy == "policies/routing.yaml"
    assert settings.opa_url is None  # start the sidecar
    assert settings.data_classes == ("public", "internal", "confidential", "pii-restricted")


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "kamiwaza.yaml"
    config.write_text(
        "port: 9000\nhost: 0.0.0.0\nopa_timeout_ms: 100\ntenant_floors: {acme: confidential}\n"
    )
    settings = load_settings(
        str(config),
        overrides={"port": 9100, "host": None},
        environ={"KAMIWAZA_PORT": "9001", "KAMIWAZA_OPA_TIMEOUT_MS": "50"},
    )
    assert settings.port == 9100  # flag beats env and file
    assert settings.host == "0.0.0.0"  # file (flag not given)
    assert settings.opa_timeout_ms == 50  # env beats file
    assert dict(settings.tenant_floors) == {"acme": "confidential"}


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("audit_dir: /var/audit\n")
    settings = load_settings(environ={"KAMIWAZA_CONFIG": str(config)})
    assert settings.audit_dir == "/var/audit"


def test_env_lists_and_maps() -> None:
    settings = load_settings(
        environ={
            "KAMIWAZA_DATA_CLASSES": "open,secret",
            "KAMIWAZA_DEFAULT_DATA_CLASS": "open",
            "KAMIWAZA_TENANT_FLOORS": "acme=secret, globex=open",
        }
    )
    assert settings.data_classes == ("open", "secret")
    assert dict(settings.tenant_floors) == {"acme": "secret", "globex": "open"}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"KAMIWAZA_PORT": "eighty"}, "KAMIWAZA_PORT: expected an integer, got 'eighty'"),
        ({"KAMIWAZA_OPA_TIMEOUT_MS": "0"}, "KAMIWAZA_OPA_TIMEOUT_MS: must be at least 1, got 0"),
        ({"KAMIWAZA_OPA_GOGC": "-1"}, "KAMIWAZA_OPA_GOGC: must be at least 0, got -1"),
        (
            {"KAMIWAZA_BREAKER_COOLDOWN_S": "-1"},
            "KAMIWAZA_BREAKER_COOLDOWN_S: must not be negative",
        ),
        (
            {"KAMIWAZA_AUDIT_BATCH_INTERVAL_S": "0"},
            "KAMIWAZA_AUDIT_BATCH_INTERVAL_S: must be positive, got 0",
        ),
        ({"KAMIWAZA_DEFAULT_DATA_CLASS": "secret"}, "default_data_class: 'secret' is not one of"),
        ({"KAMIWAZA_TENANT_FLOORS": "acme"}, "KAMIWAZA_TENANT_FLOORS: expected key=value pairs"),
        ({"KAMIWAZA_TENANT_FLOORS": "acme=top"}, "tenant_floors.acme: 'top' is not one of"),
        (
            {"KAMIWAZA_DATA_CLASSES": "a,a", "KAMIWAZA_DEFAULT_DATA_CLASS": "a"},
            "data_classes: names must be unique",
        ),
        ({"KAMIWAZA_CONFIG": "/nonexistent/k.yaml"}, "config file /nonexistent/k.yaml:"),
    ],
)
def test_bad_values_fail_naming_the_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ=environ)
    assert str(info.value).startswith(message)


def test_bad_config_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("prot: 80\n")
    with pytest.raises(SettingsError, match=r"c.yaml: unknown setting 'prot'"):
        load_settings(str(config), environ={})
    config.write_text("port: [80\n")
    with pytest.raises(SettingsError, match=r"c.yaml: invalid YAML"):
        load_settings(str(config), environ={})
    config.write_text("- 1\n")
    with pytest.raises(SettingsError, match=r"expected a mapping of settings"):
        load_settings(str(config), environ={})
    config.write_text("port: true\n")
    with pytest.raises(SettingsError, match=r"c.yaml: port: expected an integer, got True"):
        load_settings(str(config), environ={})


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(SettingsError, match="unknown setting 'colour'"):
        load_settings(overrides={"colour": "blue"}, environ={})

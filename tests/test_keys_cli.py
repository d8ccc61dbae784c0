"""`kamiwaza keys ...` end to end: outputs and exit codes (0 ok, 1 operational, 2 usage)."""

from __future__ import annotations

import json
import re
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.auth import keys as keys_module
from gateway.auth.keys import KeyStore
from gateway.cli import main
from gateway.errors import AuthenticationError

CREATED = datetime(2025, 11, 25, 11, 0, 0, tzinfo=UTC)
REVOKED = datetime(2025, 11, 26, 9, 30, 0, tzinfo=UTC)
CREATE_OUT = re.compile(r"key_id: ([0-9a-f]{16})\napi_key: (kw_\1_[A-Za-z0-9_-]{43})\n")
STORE_NOTE = "Store the API key now: it is shown only once and cannot be recovered.\n"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAMIWAZA_KEYS", raising=False)
    monkeypatch.setattr(keys_module, "_utcnow", lambda: CREATED)
    return tmp_path


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        main, list(args), prog_name="kamiwaza", catch_exceptions=False, env=env
    )
    return result.exit_code, result.stdout, result.stderr


def create(*args: str) -> tuple[str, str]:
    """Run `keys create` on keys.json; return (key id, API key)."""
    code, out, err = run("keys", "create", "--keys-file", "keys.json", *args)
    assert code == 0, err
    match = CREATE_OUT.fullmatch(out)
    assert match is not None, out
    return match.group(1), match.group(2)


def test_create_prints_the_key_once_and_stores_only_its_hash(workdir: Path) -> None:
    code, out, err = run(
        "keys",
        "create",
        "--keys-file",
        "keys.json",
        "--tenant",
        "enterprise-acme",
        "--user",
        "u-17",
        "--roles",
        "analyst, admin",
        "--data-classes",
        "public,internal",
        "--default-data-class",
        "internal",
    )
    assert code == 0
    match = CREATE_OUT.fullmatch(out)
    assert match is not None, out
    key_id, api_key = match.groups()
    assert err == f"Created key {key_id} for tenant 'enterprise-acme' in keys.json.\n" + STORE_NOTE

    keys_file = workdir / "keys.json"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert api_key.split("_", 2)[2] not in keys_file.read_text()
    identity = KeyStore.load(keys_file).verify(api_key)
    assert (identity.tenant, identity.user, identity.roles) == (
        "enterprise-acme",
        "u-17",
        ("analyst", "admin"),
    )
    assert (identity.key_id, identity.allowed_data_classes, identity.default_data_class) == (
        key_id,
        ("public", "internal"),
        "internal",
    )


def test_list_shows_every_key_without_secrets(workdir: Path) -> None:
    acme, acme_key = create(
        "--tenant", "enterprise-acme", "--user", "u-17", "--roles", "analyst,admin"
    )
    globex, globex_key = create("--tenant", "globex", "--data-classes", "public")
    code, out, err = run("keys", "list", "--keys-file", "keys.json")
    assert (code, err) == (0, "")
    assert out == (
        "ID                TENANT           USER  ROLES          DATA CLASSES  DEFAULT  "
        "CREATED               REVOKED\n"
        f"{acme}  enterprise-acme  u-17  analyst,admin  any           -        "
        "2025-11-25T11:00:00Z  -\n"
        f"{globex}  globex           -     -              public        -        "
        "2025-11-25T11:00:00Z  -\n"
    )
    stored = json.loads((workdir / "keys.json").read_text())["keys"]
    for secret_or_hash in (acme_key, globex_key, stored[0]["hash"], stored[0]["salt"]):
        assert secret_or_hash not in out

    code, out, err = run("keys", "list", "--keys-file", "keys.json", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == [
        {
            "id": acme,
            "tenant": "enterprise-acme",
            "user": "u-17",
            "roles": ["analyst", "admin"],
            "allowed_data_classes": None,
            "default_data_class": None,
            "created": "2025-11-25T11:00:00Z",
            "revoked_at": None,
        },
        {
            "id": globex,
            "tenant": "globex",
            "user": None,
            "roles": [],
            "allowed_data_classes": ["public"],
            "default_data_class": None,
            "created": "2025-11-25T11:00:00Z",
            "revoked_at": None,
        },
    ]


def test_list_of_an_empty_file(workdir: Path) -> None:
    (workdir / "keys.json").write_text("")
    assert run("keys", "list", "--keys-file", "keys.json") == (0, "no keys in keys.json\n", "")
    assert run("keys", "list", "--keys-file", "keys.json", "--json") == (0, "[]\n", "")


def test_revoke_then_revoke_again(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_id, api_key = create("--tenant", "acme")
    monkeypatch.setattr(keys_module, "_utcnow", lambda: REVOKED)
    assert run("keys", "revoke", "--keys-file", "keys.json", key_id) == (
        0,
        f"revoked key {key_id} (tenant 'acme') at 2025-11-26T09:30:00Z\n",
        "Running gateways stop accepting it when they reload the keys file.\n",
    )
    assert run("keys", "revoke", "--keys-file", "keys.json", key_id) == (
        0,
        f"key {key_id} (tenant 'acme') was already revoked at 2025-11-26T09:30:00Z\n",
        "",
    )
    code, out, _ = run("keys", "list", "--keys-file", "keys.json")
    assert (code, out.splitlines()[1]) == (
        0,
        f"{key_id}  acme    -     -      any           -        "
        "2025-11-25T11:00:00Z  2025-11-26T09:30:00Z",
    )
    with pytest.raises(AuthenticationError, match=r"^API key has been revoked$"):
        KeyStore.load(workdir / "keys.json").verify(api_key)


def test_revoke_of_an_unknown_key_id_exits_1(workdir: Path) -> None:
    create("--tenant", "acme")
    before = (workdir / "keys.json").read_bytes()
    assert run("keys", "revoke", "--keys-file", "keys.json", "0123456789abcdef") == (
        1,
        "",
        "error: no key with id 0123456789abcdef in keys.json\n",
    )
    assert (workdir / "keys.json").read_bytes() == before


def test_revoke_never_echoes_a_pasted_api_key(workdir: Path) -> None:
    _, api_key = create("--tenant", "acme")
    code, out, err = run("keys", "revoke", "--keys-file", "keys.json", api_key)
    assert (code, out) == (2, "")
    assert err == (
        "Usage: kamiwaza keys revoke [OPTIONS] KEY_ID\n"
        "Try 'kamiwaza keys revoke --help' for help.\n\n"
        "Error: Invalid value for KEY_ID: that is a whole API key; pass only its key id "
        "(16 hex characters, as shown by `kamiwaza keys list`)\n"
    )
    assert api_key not in err
    code, _, err = run("keys", "revoke", "--keys-file", "keys.json", "not-an-id")
    assert code == 2
    assert err.endswith(
        "Error: Invalid value for KEY_ID: expected a key id "
        "(16 hex characters, as shown by `kamiwaza keys list`)\n"
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "Error: Missing option '--tenant'."),
        (
            ["--tenant", "acme", "--roles", "a,,b"],
            "Error: Invalid value for '--roles': each name must be a non-empty string "
            "(comma-separated list)",
        ),
        (["--tenant", " acme"], "Error: tenant must not start or end with whitespace"),
        (
            ["--tenant", "acme", "--data-classes", "public", "--default-data-class", "internal"],
            "Error: default_data_class 'internal' is not in allowed_data_classes",
        ),
    ],
)
def test_create_usage_errors_exit_2(workdir: Path, args: list[str], error: str) -> None:
    code, out, err = run("keys", "create", "--keys-file", "keys.json", *args)
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == error
    assert not (workdir / "keys.json").exists()


def test_the_keys_file_defaults_to_the_one_serve_uses(workdir: Path) -> None:
    """`keys list` and `keys revoke` as the README shows them: keys.json, like serve."""
    key_id, _ = create("--tenant", "acme")
    code, out, err = run("keys", "list", "--json")
    assert (code, err) == (0, "")
    assert [entry["id"] for entry in json.loads(out)] == [key_id]
    code, out, _ = run("keys", "revoke", key_id)
    assert (code, out) == (0, f"revoked key {key_id} (tenant 'acme') at 2025-11-25T11:00:00Z\n")
    code, out, _ = run("keys", "create", "--tenant", "globex")
    assert code == 0
    assert [r.tenant for r in KeyStore.load(workdir / "keys.json").records()] == [
        "acme",
        "globex",
    ]


def test_the_keys_file_of_the_gateway_config(workdir: Path) -> None:
    (workdir / "etc").mkdir()
    (workdir / "etc" / "gateway.yaml").write_text("keys: etc/tenants.json\n")
    code, out, _ = run("keys", "create", "--config", "etc/gateway.yaml", "--tenant", "acme")
    assert code == 0
    key_id = out.split()[1]
    assert [r.key_id for r in KeyStore.load(workdir / "etc" / "tenants.json").records()] == [key_id]
    code, out, _ = run("keys", "list", "--json", env={"KAMIWAZA_CONFIG": "etc/gateway.yaml"})
    assert code == 0
    assert [entry["id"] for entry in json.loads(out)] == [key_id]
    # An explicit --keys-file (or KAMIWAZA_KEYS) wins over the config.
    assert run("keys", "list", "--config", "etc/gateway.yaml", "--keys-file", "keys.json") == (
        1,
        "",
        "error: keys.json: keys file not found\n",
    )
    code, _, err = run("keys", "list", "--config", "etc/missing.yaml")
    assert code == 1
    assert err == "error: config file etc/missing.yaml: No such file or directory\n"


def test_keys_file_from_the_environment(workdir: Path) -> None:
    key_id, _ = create("--tenant", "acme")
    code, out, _ = run("keys", "list", "--json", env={"KAMIWAZA_KEYS": "keys.json"})
    assert code == 0
    assert [entry["id"] for entry in json.loads(out)] == [key_id]


def test_unreadable_or_invalid_keys_files_exit_1(workdir: Path) -> None:
    assert run("keys", "list", "--keys-file", "keys.json") == (
        1,
        "",
        "error: keys.json: keys file not found\n",
    )
    assert run("keys", "revoke", "--keys-file", "keys.json", "0123456789abcdef") == (
        1,
        "",
        "error: keys.json: keys file not found\n",
    )
    broken = '{"version": 1, "keys": [{"id": "0123456789abcdef"}]}'
    (workdir / "keys.json").write_text(broken)
    error = (
        "error: keys.json: keys[0] (id 0123456789abcdef): missing field(s): 'hash_alg', "
        "'salt', 'hash', 'tenant', 'user', 'roles', 'allowed_data_classes', "
        "'default_data_class', 'created', 'revoked_at'\n"
    )
    assert run("keys", "list", "--keys-file", "keys.json") == (1, "", error)
    # A write never replaces a file it cannot understand.
    assert run("keys", "create", "--keys-file", "keys.json", "--tenant", "acme") == (1, "", error)
    assert (workdir / "keys.json").read_text() == broken


def test_create_in_a_missing_directory_exits_1(workdir: Path) -> None:
    assert run("keys", "create", "--keys-file", "nowhere/keys.json", "--tenant", "acme") == (
        1,
        "",
        "error: nowhere/keys.json: cannot write keys file: No such file or directory\n",
    )


def test_keys_group_is_registered(workdir: Path) -> None:
    code, out, _ = run("keys", "--help")
    assert code == 0
    assert out == (
        "Usage: kamiwaza keys [OPTIONS] COMMAND [ARGS]...\n\n"
        "  Issue, list and revoke API keys.\n\n"
        "Options:\n"
        "  --help  Show this message and exit.\n\n"
        "Commands:\n"
        "  create  Issue a new API key and print it (once: only its hash is stored).\n"
        "  list    List every key, revoked ones included (never secrets or hashes).\n"
        "  revoke  Revoke the key KEY_ID (as shown by `kamiwaza keys list`).\n"
    )

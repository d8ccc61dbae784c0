"""`kamiwaza keys ...`: issue, list and revoke the gateway's API keys.

The keys file (format in :mod:`gateway.auth.keys`) holds only salted hashes; a
new key is printed once by ``create`` and cannot be shown again. ``list`` never
shows secrets or hashes. Running gateways apply a revocation when they reload
the keys file.

Exit codes: 0 ok, 1 operational error (unreadable or invalid keys file, unknown
key id), 2 usage errors.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from gateway.auth.keys import KeyRecord, KeyStore

EXIT_OPERATIONAL = 1


def _keys_file_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--keys-file` and `--config`, handed to the command as one `keys_file`.

    The file is the one `kamiwaza serve` would use: `--keys-file`, else
    KAMIWAZA_KEYS, else the `keys` setting of the config file (`--config` or
    KAMIWAZA_CONFIG), else `keys.json`.
    """

    @functools.wraps(func)
    def command(*, keys_file: str | None, config_file: str | None, **kwargs: Any) -> Any:
        return func(keys_file=keys_file or _configured_keys_file(config_file), **kwargs)

    command = click.option(
        "--config",
        "config_file",
        default=None,
        type=click.Path(dir_okay=False),
        help="Gateway config file whose `keys` setting names the file (also KAMIWAZA_CONFIG).",
    )(command)
    return click.option(
        "--keys-file",
        "keys_file",
        default=None,
        envvar="KAMIWAZA_KEYS",
        type=click.Path(dir_okay=False),
        help="The keys file (env: KAMIWAZA_KEYS; default: the gateway's `keys` setting, "
        "keys.json).",
    )(command)


def _configured_keys_file(config_file: str | None) -> str:
    from gateway.errors import ConfigError
    from gateway.settings import load_settings

    try:
        return load_settings(config_file).keys
    except ConfigError as err:
        _fail(str(err))


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_OPERATIONAL)


def _name_list(_ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """Parse a comma-separated option; every name must be usable."""
    if value is None:
        return None
    from gateway.auth.identity import validate_name

    names: list[str] = []
    for item in value.split(","):
        try:
            names.append(validate_name(item.strip(), "each name"))
        except ValueError as err:
            raise click.BadParameter(f"{err} (comma-separated list)") from None
    return list(dict.fromkeys(names))


def _load(keys_file: str, *, missing_ok: bool = False) -> KeyStore:
    from gateway.auth.identity import AuthConfigError
    from gateway.auth.keys import KeyStore

    try:
        return KeyStore.load(keys_file, missing_ok=missing_ok)
    except AuthConfigError as err:
        _fail(str(err))


@click.group("keys")
def keys() -> None:
    """Issue, list and revoke API keys."""


@keys.command("create")
@_keys_file_option
@click.option("--tenant", required=True, help="Tenant the key authenticates as.")
@click.option("--user", default=None, help="User id recorded for requests with this key.")
@click.option(
    "--roles", callback=_name_list, default=None, help="Comma-separated roles, e.g. analyst,admin."
)
@click.option(
    "--data-classes",
    "data_classes",
    callback=_name_list,
    default=None,
    help="Comma-separated data classes the key may use (default: any).",
)
@click.option(
    "--default-data-class",
    default=None,
    help="Data class of requests that do not name one.",
)
def create_cmd(
    *,
    keys_file: str,
    tenant: str,
    user: str | None,
    roles: list[str] | None,
    data_classes: list[str] | None,
    default_data_class: str | None,
) -> None:
    """Issue a new API key and print it (once: only its hash is stored).

    Creates the keys file if it does not exist.
    """
    from gateway.auth.identity import AuthConfigError

    store = _load(keys_file, missing_ok=True)
    try:
        record, api_key = store.create(
            tenant=tenant,
            user=user,
            roles=roles or (),
            allowed_data_classes=data_classes,
            default_data_class=default_data_class,
        )
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    except AuthConfigError as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"{keys_file}: cannot write keys file: {err.strerror}")
    click.echo(f"key_id: {record.key_id}")
    click.echo(f"api_key: {api_key}")
    click.echo(
        f"Created key {record.key_id} for tenant {record.tenant!r} in {keys_file}.\n"
        "Store the API key now: it is shown only once and cannot be recovered.",
        err=True,
    )


def _row(record: KeyRecord) -> list[str]:
    from gateway.auth.keys import format_timestamp

    classes = record.allowed_data_classes
    return [
        record.key_id,
        record.tenant,
        record.user or "-",
        ",".join(record.roles) or "-",
        "any" if classes is None else ",".join(classes) or "none",
        record.default_data_class or "-",
        format_timestamp(record.created),
        "-" if record.revoked_at is None else format_timestamp(record.revoked_at),
    ]


_HEADER = ["ID", "TENANT", "USER", "ROLES", "DATA CLASSES", "DEFAULT", "CREATED", "REVOKED"]


@keys.command("list")
@_keys_file_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_cmd(keys_file: str, as_json: bool) -> None:
    """List every key, revoked ones included (never secrets or hashes)."""
    records = _load(keys_file).records()
    if as_json:
        listing: list[dict[str, Any]] = [r.public_dict() for r in records]
        click.echo(json.dumps(listing, indent=2))
        return
    if not records:
        click.echo(f"no keys in {keys_file}")
        return
    rows = [_HEADER, *(_row(r) for r in records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@keys.command("revoke")
@_keys_file_option
@click.argument("key_id")
def revoke_cmd(keys_file: str, key_id: str) -> None:
    """Revoke the key KEY_ID (as shown by `kamiwaza keys list`)."""
    from gateway.auth.identity import AuthConfigError
    from gateway.auth.keys import API_KEY_PREFIX, UnknownKeyError, format_timestamp, is_key_id

    if not is_key_id(key_id):
        # Never echo the argument: it may be a whole API key pasted by mistake.
        hint = (
            "that is a whole API key; pass only its key id"
            if key_id.startswith(API_KEY_PREFIX)
            else "expected a key id"
        )
        raise click.BadParameter(
            f"{hint} (16 hex characters, as shown by `kamiwaza keys list`)",
            param_hint="KEY_ID",
        )
    store = _load(keys_file)
    try:
        record, newly = store.revoke(key_id)
    except UnknownKeyError:
        _fail(f"no key with id {key_id} in {keys_file}")
    except AuthConfigError as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"{keys_file}: cannot write keys file: {err.strerror}")
    assert record.revoked_at is not None
    revoked_at = format_timestamp(record.revoked_at)
    if not newly:
        click.echo(f"key {key_id} (tenant {record.tenant!r}) was already revoked at {revoked_at}")
        return
    click.echo(f"revoked key {key_id} (tenant {record.tenant!r}) at {revoked_at}")
    click.echo("Running gateways stop accepting it when they reload the keys file.", err=True)

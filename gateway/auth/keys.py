"""API keys: the keys file, issuing and revoking keys, and verifying a presented
key on the request hot path.

Key format
----------
An API key, shown to the operator once when it is created, is::

    kw_<key id>_<secret>

``<key id>`` is 16 lowercase hex characters (64 random bits). It is not secret:
it is how a key is looked up, listed, revoked and named in logs. ``<secret>`` is
43 base64url characters encoding 32 bytes from :mod:`secrets`. Only a salted
hash of the secret is stored.

Keys file
---------
One JSON document, written only by :class:`KeyStore` (``kamiwaza keys``),
atomically (temporary file + ``os.replace``) and with mode 0600::

    {
      "version": 1,
      "keys": [
        {
          "id": "3f9c0a7d5e21b4c8",
          "hash_alg": "hmac-sha256",
          "salt": "<32 hex chars: 16 random bytes, one per key>",
          "hash": "<64 hex chars: HMAC-SHA256(key=salt, message=secret)>",
          "tenant": "enterprise-acme",
          "user": "u-17",
          "roles": ["analyst"],
          "allowed_data_classes": ["public", "internal"],
          "default_data_class": "internal",
          "created": "2025-11-25T11:00:00Z",
          "revoked_at": null
        }
      ]
    }

``user``, ``allowed_data_classes`` (``null``: any data class),
``default_data_class`` and ``revoked_at`` may be ``null``; timestamps are UTC,
ISO 8601. Every field must be present and unknown fields are refused, so that a
misspelt ``allowed_data_classes`` can never silently mean "any data class".
An empty file is an empty store.

The gateway reads the file once at start-up (:meth:`KeyStore.load`) and again on
:meth:`KeyStore.reload` (e.g. on SIGHUP), which is how a revocation reaches a
running gateway. Writers hold an exclusive ``flock`` on the file's directory
while they read, change and replace the file, so that two concurrent
``kamiwaza keys`` commands cannot lose each other's changes (a lost revocation
would be a security bug).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from gateway.auth.identity import AuthConfigError, Identity, validate_name
from gateway.errors import AuthenticationError

log = logging.getLogger(__name__)

API_KEY_PREFIX = "kw_"
KEYS_FILE_VERSION = 1
HASH_ALG = "hmac-sha256"

_SECRET_BYTES = 32
_SALT_BYTES = 16
_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
# token_urlsafe(32) is always exactly 43 characters of the base64url alphabet.
_API_KEY_RE = re.compile(r"kw_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_HEX_RE = re.compile(r"[0-9a-f]+")

_ENTRY_FIELDS = (
    "id",
    "hash_alg",
    "salt",
    "hash",
    "tenant",
    "user",
    "roles",
    "allowed_data_classes",
    "default_data_class",
    "created",
    "revoked_at",
)

# Verifying an unknown key id still hashes and compares against this throwaway
# entry, so that response time does not tell a caller which key ids exist.
_DUMMY_SALT = secrets.token_bytes(_SALT_BYTES)
_DUMMY_DIGEST = secrets.token_bytes(hashlib.sha256().digest_size)

_T = TypeVar("_T")


class UnknownKeyError(LookupError):
    """No key with this id in the keys file."""


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def format_timestamp(moment: datetime) -> str:
    """UTC, second precision, ``Z`` suffix: the keys file's timestamp format."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest(salt: bytes, secret: str) -> bytes:
    # A fast keyed hash is right here, unlike for passwords: the secret carries
    # 256 random bits, so even a leaked keys file cannot be brute-forced, and a
    # deliberately slow KDF (bcrypt, scrypt) would cost tens of milliseconds of
    # event-loop time on every request. The per-key salt keeps equal secrets from
    # producing equal hashes and defeats precomputed tables.
    return hmac.new(salt, secret.encode("ascii"), hashlib.sha256).digest()


def _validate_names(values: object, what: str) -> tuple[str, ...]:
    if not isinstance(values, list | tuple):
        raise ValueError(f"{what} must be a list of strings")
    names = tuple(validate_name(v, f"each of {what}") for v in values)
    if len(set(names)) != len(names):
        raise ValueError(f"{what} lists a name twice")
    return names


def _check_data_classes(
    allowed: tuple[str, ...] | None,
    default: str | None,
    known: Collection[str] | None,
) -> None:
    if default is not None and allowed is not None and default not in allowed:
        raise ValueError(f"default_data_class {default!r} is not in allowed_data_classes")
    if known is not None:
        for name in (*(allowed or ()), *([default] if default else [])):
            if name not in known:
                raise ValueError(f"unknown data class {name!r}")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key as stored: everything but the secret."""

    key_id: str
    tenant: str
    user: str | None
    roles: tuple[str, ...]
    allowed_data_classes: tuple[str, ...] | None
    default_data_class: str | None
    created: datetime
    revoked_at: datetime | None
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def identity(self) -> Identity:
        return Identity(
            tenant=self.tenant,
            user=self.user,
            roles=self.roles,
            key_id=self.key_id,
            allowed_data_classes=self.allowed_data_classes,
            default_data_class=self.default_data_class,
            method="api_key",
        )

    def public_dict(self) -> dict[str, Any]:
        """The record without salt and hash, JSON-ready (for listings)."""
        return {
            "id": self.key_id,
            "tenant": self.tenant,
            "user": self.user,
            "roles": list(self.roles),
            "allowed_data_classes": (
                None if self.allowed_data_classes is None else list(self.allowed_data_classes)
            ),
            "default_data_class": self.default_data_class,
            "created": format_timestamp(self.created),
            "revoked_at": None if self.revoked_at is None else format_timestamp(self.revoked_at),
        }

    def file_dict(self) -> dict[str, Any]:
        """The record as written to the keys file (field order as documented)."""
        public = self.public_dict()
        stored = {
            "id": self.key_id,
            "hash_alg": HASH_ALG,
            "salt": self.salt.hex(),
            "hash": self.digest.hex(),
        }
        return {name: stored[name] if name in stored else public[name] for name in _ENTRY_FIELDS}


def _parse_timestamp(value: object, what: str, *, nullable: bool) -> datetime | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be an ISO 8601 timestamp string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise ValueError(f"{what} must carry a time zone (e.g. a trailing Z)")
    return moment.astimezone(UTC)


def _parse_hex(value: object, what: str, length: int) -> bytes:
    if not isinstance(value, str) or len(value) != length or not _HEX_RE.fullmatch(value):
        raise ValueError(f"{what} must be {length} lowercase hex characters")
    return bytes.fromhex(value)


def _parse_entry(raw: object, known_data_classes: Collection[str] | None) -> KeyRecord:
    """Validate one entry of the keys file; ValueError names the problem."""
    if not isinstance(raw, dict):
        raise ValueError("must be a JSON object")
    unknown = sorted(set(raw) - set(_ENTRY_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(map(repr, unknown))}")
    missing = [name for name in _ENTRY_FIELDS if name not in raw]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(map(repr, missing))}")
    key_id = raw["id"]
    if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
        raise ValueError("'id' must be 16 lowercase hex characters")
    if raw["hash_alg"] != HASH_ALG:
        raise ValueError(f"'hash_alg' must be {HASH_ALG!r}")
    salt = _parse_hex(raw["salt"], "'salt'", _SALT_BYTES * 2)
    digest = _parse_hex(raw["hash"], "'hash'", hashlib.sha256().digest_size * 2)
    tenant = validate_name(raw["tenant"], "'tenant'")
    user = None if raw["user"] is None else validate_name(raw["user"], "'user'")
    roles = _validate_names(raw["roles"], "'roles'")
    allowed_raw = raw["allowed_data_classes"]
    allowed = (
        None if allowed_raw is None else _validate_names(allowed_raw, "'allowed_data_classes'")
    )
    default_raw = raw["default_data_class"]
    default = None if default_raw is None else validate_name(default_raw, "'default_data_class'")
    _check_data_classes(allowed, default, known_data_classes)
    created = _parse_timestamp(raw["created"], "'created'", nullable=False)
    assert created is not None
    revoked_at = _parse_timestamp(raw["revoked_at"], "'revoked_at'", nullable=True)
    return KeyRecord(
        key_id=key_id,
        tenant=tenant,
        user=user,
        roles=roles,
        allowed_data_classes=allowed,
        default_data_class=default,
        created=created,
        revoked_at=revoked_at,
        salt=salt,
        digest=digest,
    )


def _read_keys_file(
    path: Path, *, missing_ok: bool, known_data_classes: Collection[str] | None
) -> dict[str, KeyRecord]:
    """Read and validate the whole file; AuthConfigError names the offending entry."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise AuthConfigError(f"{path}: keys file not found") from None
    except OSError as err:
        raise AuthConfigError(f"{path}: cannot read keys file: {err.strerror}") from None
    _warn_if_exposed(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthConfigError(f"{path}: keys file is not UTF-8") from None
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise AuthConfigError(
            f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}"
        ) from None
    if not isinstance(doc, dict):
        raise AuthConfigError(f"{path}: keys file must be a JSON object with 'version' and 'keys'")
    unknown = sorted(set(doc) - {"version", "keys"})
    if unknown:
        raise AuthConfigError(
            f"{path}: unknown top-level field(s): {', '.join(map(repr, unknown))}"
        )
    if doc.get("version") != KEYS_FILE_VERSION:
        raise AuthConfigError(
            f"{path}: unsupported keys file version {doc.get('version')!r}; "
            f"this gateway reads version {KEYS_FILE_VERSION}"
        )
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise AuthConfigError(f"{path}: 'keys' must be a list")
    records: dict[str, KeyRecord] = {}
    for index, raw in enumerate(entries):
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        where = f"{path}: keys[{index}]"
        if isinstance(raw_id, str) and _KEY_ID_RE.fullmatch(raw_id):
            where += f" (id {raw_id})"
        try:
            record = _parse_entry(raw, known_data_classes)
        except ValueError as err:
            raise AuthConfigError(f"{where}: {err}") from None
        if record.key_id in records:
            raise AuthConfigError(f"{where}: duplicate key id")
        records[record.key_id] = record
    return records


def _warn_if_exposed(path: Path) -> None:
    with contextlib.suppress(OSError):
        mode = path.stat().st_mode
        if mode & 0o077:
            # Only hashes are stored, but the file still maps keys to tenants and
            # roles; operators should know it is readable by others.
            log.warning("keys file %s has mode %o; expected 0600", path, mode & 0o777)


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    # Locking the directory rather than a sidecar ".lock" file leaves nothing
    # behind; the keys file itself cannot be locked because os.replace swaps it.
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_keys_file(path: Path, records: Sequence[KeyRecord]) -> None:
    doc = {"version": KEYS_FILE_VERSION, "keys": [r.file_dict() for r in records]}
    data = (json.dumps(doc, indent=2) + "\n").encode("utf-8")
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            os.fchmod(tmp.fileno(), 0o600)
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    # Make the rename itself durable: a revocation must survive a crash.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _Entry(NamedTuple):
    record: KeyRecord
    identity: Identity


class KeyStore:
    """The API keys of one keys file, held in memory for O(1) verification.

    Create with :meth:`load`. :meth:`verify` does no I/O. :meth:`create` and
    :meth:`revoke` re-read the file under a lock, change it and replace it
    atomically, so they never overwrite a concurrent writer's change.
    """

    def __init__(
        self,
        path: Path,
        records: dict[str, KeyRecord],
        known_data_classes: Collection[str] | None,
    ) -> None:
        self._path = path
        self._known_data_classes = (
            None if known_data_classes is None else frozenset(known_data_classes)
        )
        self._entries: dict[str, _Entry] = {}
        self._install(records)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        missing_ok: bool = False,
        known_data_classes: Collection[str] | None = None,
    ) -> KeyStore:
        """Read and validate the keys file at ``path``.

        ``missing_ok`` makes a missing file an empty store (for ``keys create``).
        With ``known_data_classes``, every data class a key names must be one of
        them. Raises :class:`AuthConfigError` naming the offending entry.
        """
        file = Path(path)
        known = None if known_data_classes is None else frozenset(known_data_classes)
        records = _read_keys_file(file, missing_ok=missing_ok, known_data_classes=known)
        return cls(file, records, known)

    @property
    def path(self) -> Path:
        return self._path

    def reload(self) -> None:
        """Re-read the keys file, e.g. so that revocations take effect.

        Blocking file I/O: from the event loop, call it through
        ``asyncio.to_thread``. On error the keys in memory stay as they were and
        :class:`AuthConfigError` is raised.
        """
        records = _read_keys_file(
            self._path, missing_ok=False, known_data_classes=self._known_data_classes
        )
        self._install(records)
        log.info("reloaded %d API key(s) from %s", len(records), self._path)

    def _install(self, records: dict[str, KeyRecord]) -> None:
        # One attribute assignment swaps the whole table, so a request running
        # concurrently with a reload sees either the old keys or the new ones.
        self._entries = {key_id: _Entry(r, r.identity()) for key_id, r in records.items()}

    def __len__(self) -> int:
        return len(self._entries)

    def records(self) -> list[KeyRecord]:
        """Every key, revoked ones included, in file order (oldest first)."""
        return [entry.record for entry in self._entries.values()]

    def get(self, key_id: str) -> KeyRecord | None:
        entry = self._entries.get(key_id)
        return None if entry is None else entry.record

    def verify(self, api_key: str) -> Identity:
        """The identity of a presented API key; AuthenticationError (401) otherwise.

        O(1) and free of I/O: a dict lookup by key id, one HMAC and a
        constant-time comparison. Messages never contain the key.
        """
        match = _API_KEY_RE.fullmatch(api_key)
        if match is None:
            raise AuthenticationError("malformed API key")
        key_id, secret = match.groups()
        entry = self._entries.get(key_id)
        if entry is None:
            salt, expected = _DUMMY_SALT, _DUMMY_DIGEST
        else:
            salt, expected = entry.record.salt, entry.record.digest
        matches = hmac.compare_digest(_digest(salt, secret), expected)
        if entry is None or not matches:
            raise AuthenticationError("invalid API key")
        # Revocation is reported only to a caller who holds the right secret, so
        # it does not reveal anything about key ids to someone guessing them.
        if entry.record.revoked_at is not None:
            raise AuthenticationError("API key has been revoked")
        return entry.identity

    def _mutate(self, change: Callable[[dict[str, KeyRecord]], _T]) -> _T:
        with _directory_lock(self._path.parent):
            records = _read_keys_file(
                self._path, missing_ok=True, known_data_classes=self._known_data_classes
            )
            result = change(records)
            _write_keys_file(self._path, list(records.values()))
        self._install(records)
        return result

    def create(
        self,
        *,
        tenant: str,
        user: str | None = None,
        roles: Sequence[str] = (),
        allowed_data_classes: Sequence[str] | None = None,
        default_data_class: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """Issue a new key, write it to the keys file, and return it with the
        plaintext API key, which exists nowhere else: show it once.

        Raises ValueError for unusable arguments, AuthConfigError or OSError if
        the keys file cannot be read or written.
        """
        validate_name(tenant, "tenant")
        if user is not None:
            validate_name(user, "user")
        role_names = _validate_names(list(roles), "roles")
        allowed = (
            None
            if allowed_data_classes is None
            else _validate_names(list(allowed_data_classes), "data classes")
        )
        if default_data_class is not None:
            validate_name(default_data_class, "default data class")
        _check_data_classes(allowed, default_data_class, self._known_data_classes)

        secret = secrets.token_urlsafe(_SECRET_BYTES)
        salt = secrets.token_bytes(_SALT_BYTES)

        def add(records: dict[str, KeyRecord]) -> KeyRecord:
            key_id = secrets.token_hex(8)
            while key_id in records:  # 64 random bits: practically never loops
                key_id = secrets.token_hex(8)
            record = KeyRecord(
                key_id=key_id,
                tenant=tenant,
                user=user,
                roles=role_names,
                allowed_data_classes=allowed,
                default_data_class=default_data_class,
                created=_utcnow(),
                revoked_at=None,
                salt=salt,
                digest=_digest(salt, secret),
            )
            records[key_id] = record
            return record

        record = self._mutate(add)
        return record, f"{API_KEY_PREFIX}{record.key_id}_{secret}"

    def revoke(self, key_id: str) -> tuple[KeyRecord, bool]:
        """Mark a key revoked in the keys file.

        Returns the record and whether this call revoked it (False: it already
        was). Raises :class:`UnknownKeyError` if no key has this id.
        """

        def mark(records: dict[str, KeyRecord]) -> tuple[KeyRecord, bool]:
            record = records.get(key_id)
            if record is None:
                raise UnknownKeyError(key_id)
            if record.revoked_at is not None:
                return record, False
            records[key_id] = replace(record, revoked_at=_utcnow())
            return records[key_id], True

        return self._mutate(mark)


def is_key_id(value: str) -> bool:
    """Whether ``value`` has the shape of a key id (not whether it exists)."""
    return _KEY_ID_RE.fullmatch(value) is not None

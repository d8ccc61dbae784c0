"""Authentication: API keys in the keys file, JWTs against a JWKS, and the
Authenticator that picks between them. Identity never comes from a bare header."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import stat
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth import (
    AuthConfigError,
    Authenticator,
    AuthUnavailableError,
    Identity,
    JwtSettings,
    JwtVerifier,
    KeyStore,
    UnknownKeyError,
)
from gateway.auth import keys as keys_module
from gateway.errors import AuthenticationError

CREATED = datetime(2025, 11, 25, 11, 0, 0, tzinfo=UTC)
API_KEY_RE = re.compile(r"kw_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
ISSUER = "https://idp.example.com/"
AUDIENCE = "kamiwaza-gateway"
SPOOFED = {"X-Tenant": "evil-corp", "X-User": "root", "X-Roles": "admin", "X-Data-Class": "public"}


@pytest.fixture(autouse=True)
def fixed_creation_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "_utcnow", lambda: CREATED)


@pytest.fixture
def keys_path(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


@pytest.fixture
def store(keys_path: Path) -> KeyStore:
    return KeyStore.load(keys_path, missing_ok=True)


def unauthenticated(
    excinfo: pytest.ExceptionInfo[AuthenticationError], *secrets_: str
) -> tuple[int, str, str]:
    """(status, message, code) of a 401, checking that no secret leaked into it."""
    err = excinfo.value
    for secret in secrets_:
        assert secret not in str(err)
        assert secret not in repr(err)
        assert secret not in json.dumps(err.body())
    return err.status, err.message, err.code


# --- API keys: creation, storage, verification --------------------------------


def test_create_issues_a_key_that_verifies_to_its_identity(store: KeyStore) -> None:
    record, api_key = store.create(
        tenant="enterprise-acme",
        user="u-17",
        roles=["analyst", "admin"],
        allowed_data_classes=["public", "internal"],
        default_data_class="internal",
    )
    match = API_KEY_RE.fullmatch(api_key)
    assert match is not None
    assert match.group(1) == record.key_id
    assert store.verify(api_key) == Identity(
        tenant="enterprise-acme",
        user="u-17",
        roles=("analyst", "admin"),
        key_id=record.key_id,
        allowed_data_classes=("public", "internal"),
        default_data_class="internal",
        method="api_key",
    )
    # A second store reading the same file (another gateway process) agrees.
    assert KeyStore.load(store.path).verify(api_key) == store.verify(api_key)


def test_keys_file_holds_only_a_salted_hash(store: KeyStore, keys_path: Path) -> None:
    record, api_key = store.create(tenant="acme")
    secret = API_KEY_RE.fullmatch(api_key).group(2)  # type: ignore[union-attr]
    raw = keys_path.read_bytes()
    assert secret.encode() not in raw
    assert api_key.encode() not in raw
    entry = json.loads(raw)["keys"][0]
    salt = bytes.fromhex(entry["salt"])
    assert entry == {
        "id": record.key_id,
        "hash_alg": "hmac-sha256",
        "salt": entry["salt"],
        "hash": hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest(),
        "tenant": "acme",
        "user": None,
        "roles": [],
        "allowed_data_classes": None,
        "default_data_class": None,
        "created": "2025-11-25T11:00:00Z",
        "revoked_at": None,
    }
    assert len(salt) == 16
    # Two keys never share a salt.
    store.create(tenant="acme")
    salts = {e["salt"] for e in json.loads(keys_path.read_bytes())["keys"]}
    assert len(salts) == 2


def test_keys_file_is_written_atomically_with_mode_0600(store: KeyStore, keys_path: Path) -> None:
    old_umask = os.umask(0)  # even the most permissive umask must not widen the mode
    try:
        store.create(tenant="acme")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(keys_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in keys_path.parent.iterdir()) == ["keys.json"]
    keys_path.chmod(0o644)
    store.create(tenant="globex")
    assert stat.S_IMODE(keys_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in keys_path.parent.iterdir()) == ["keys.json"]


def test_reprs_never_show_salt_or_hash(store: KeyStore) -> None:
    record, _ = store.create(tenant="acme")
    assert repr(record) == (
        f"KeyRecord(key_id='{record.key_id}', tenant='acme', user=None, roles=(), "
        "allowed_data_classes=None, default_data_class=None, "
        "created=datetime.datetime(2025, 11, 25, 11, 0, tzinfo=datetime.timezone.utc), "
        "revoked_at=None)"
    )


def test_wrong_and_unknown_keys_are_401_without_echo(store: KeyStore) -> None:
    _, api_key = store.create(tenant="acme")
    secret = api_key[-43:]
    wrong_secret = api_key[:-4] + ("AAAA" if not api_key.endswith("AAAA") else "BBBB")
    unknown_id = f"kw_{'0' * 16}_{secret}"
    for candidate in (wrong_secret, unknown_id):
        with pytest.raises(AuthenticationError) as excinfo:
            store.verify(candidate)
        assert unauthenticated(excinfo, candidate, secret) == (
            401,
            "invalid API key",
            "invalid_api_key",
        )


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "kw_",
        "kw_0123456789abcdef",
        "kw_0123456789abcdef_",
        "kw_0123456789ABCDEF_" + "a" * 43,
        "kw_0123456789abcdef_" + "a" * 42,
        "kw_0123456789abcdef_" + "a" * 44,
        "kw_0123456789abcdef_" + "a" * 42 + "!",
        "sk-0123456789abcdef",
    ],
)
def test_malformed_keys_are_401(store: KeyStore, candidate: str) -> None:
    with pytest.raises(AuthenticationError) as excinfo:
        store.verify(candidate)
    assert unauthenticated(excinfo, candidate or "\0") == (
        401,
        "malformed API key",
        "invalid_api_key",
    )


def test_every_well_formed_key_takes_the_same_hash_and_compare_path(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Known id with the right secret, known id with a wrong one, unknown id: each
    does exactly one HMAC and one constant-time comparison of 32-byte digests."""
    _, api_key = store.create(tenant="acme")
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    store.verify(api_key)
    for candidate in (
        api_key[:-1] + ("x" if api_key[-1] != "x" else "y"),
        f"kw_{'f' * 16}_{'a' * 43}",
    ):
        with pytest.raises(AuthenticationError):
            store.verify(candidate)
    assert calls == [(32, 32), (32, 32), (32, 32)]


def test_revoked_key_is_401_and_revoke_is_idempotent(store: KeyStore, keys_path: Path) -> None:
    record, api_key = store.create(tenant="acme")
    revoked, newly = store.revoke(record.key_id)
    assert (revoked, newly) == (replace(record, revoked_at=CREATED), True)
    assert store.revoke(record.key_id) == (revoked, False)
    with pytest.raises(AuthenticationError) as excinfo:
        store.verify(api_key)
    assert unauthenticated(excinfo, api_key[-43:]) == (
        401,
        "API key has been revoked",
        "invalid_api_key",
    )
    assert json.loads(keys_path.read_text())["keys"][0]["revoked_at"] == "2025-11-25T11:00:00Z"
    with pytest.raises(UnknownKeyError):
        store.revoke("0" * 16)


def test_reload_applies_changes_made_by_another_writer(keys_path: Path) -> None:
    cli_store = KeyStore.load(keys_path, missing_ok=True)
    record, api_key = cli_store.create(tenant="acme")
    gateway_store = KeyStore.load(keys_path)
    assert gateway_store.verify(api_key).key_id == record.key_id

    cli_store.revoke(record.key_id)
    new_record, new_key = cli_store.create(tenant="globex")
    # Loaded once: the running gateway does not see the change until reload().
    assert gateway_store.verify(api_key).key_id == record.key_id
    with pytest.raises(AuthenticationError):
        gateway_store.verify(new_key)

    gateway_store.reload()
    with pytest.raises(AuthenticationError, match=r"^API key has been revoked$"):
        gateway_store.verify(api_key)
    assert gateway_store.verify(new_key).tenant == "globex"
    assert [r.key_id for r in gateway_store.records()] == [record.key_id, new_record.key_id]


def test_failed_reload_keeps_the_keys_in_memory(store: KeyStore, keys_path: Path) -> None:
    _, api_key = store.create(tenant="acme")
    keys_path.write_text("{not json")
    with pytest.raises(AuthConfigError) as excinfo:
        store.reload()
    assert str(excinfo.value) == (
        f"{keys_path}:1:2: not valid JSON: Expecting property name enclosed in double quotes"
    )
    assert store.verify(api_key).tenant == "acme"


def test_concurrent_writers_lose_nothing(keys_path: Path) -> None:
    def create(index: int) -> str:
        return KeyStore.load(keys_path, missing_ok=True).create(tenant=f"t{index}")[0].key_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        created = set(pool.map(create, range(24)))
    assert {r.key_id for r in KeyStore.load(keys_path).records()} == created
    assert len(created) == 24


def test_create_refuses_unusable_arguments(store: KeyStore) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tenant": ""}, "tenant must be a non-empty string"),
        ({"tenant": " acme"}, "tenant must not start or end with whitespace"),
        ({"tenant": "ac\nme"}, "tenant contains control characters"),
        ({"tenant": "acme", "roles": ["a", "a"]}, "roles lists a name twice"),
        (
            {"tenant": "acme", "allowed_data_classes": ["public"], "default_data_class": "pii"},
            "default_data_class 'pii' is not in allowed_data_classes",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            store.create(**kwargs)
    assert len(store) == 0


def test_known_data_classes_are_enforced(keys_path: Path) -> None:
    store = KeyStore.load(keys_path, missing_ok=True, known_data_classes=["public", "internal"])
    with pytest.raises(ValueError, match=r"^unknown data class 'secret'$"):
        store.create(tenant="acme", allowed_data_classes=["public", "secret"])
    KeyStore.load(keys_path, missing_ok=True).create(tenant="acme", default_data_class="secret")
    with pytest.raises(AuthConfigError) as excinfo:
        KeyStore.load(keys_path, known_data_classes=["public", "internal"])
    key_id = KeyStore.load(keys_path).records()[0].key_id
    assert str(excinfo.value) == f"{keys_path}: keys[0] (id {key_id}): unknown data class 'secret'"


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": "0123456789abcdef",
        "hash_alg": "hmac-sha256",
        "salt": "00" * 16,
        "hash": "11" * 32,
        "tenant": "acme",
        "user": None,
        "roles": ["analyst"],
        "allowed_data_classes": None,
        "default_data_class": None,
        "created": "2025-11-25T11:00:00Z",
        "revoked_at": None,
    }
    entry.update(changes)
    return {k: v for k, v in entry.items() if v != "<drop>"}


OTHER = _entry(id="fedcba9876543210")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "keys file must be a JSON object with 'version' and 'keys'"),
        (
            {"version": 2, "keys": []},
            "unsupported keys file version 2; this gateway reads version 1",
        ),
        ({"version": 1, "keys": {}}, "'keys' must be a list"),
        ({"version": 1, "keys": [], "extra": 1}, "unknown top-level field(s): 'extra'"),
        ({"version": 1, "keys": [OTHER, "x"]}, "keys[1]: must be a JSON object"),
        (
            {"version": 1, "keys": [OTHER, _entry(tenant="<drop>")]},
            "keys[1] (id 0123456789abcdef): missing field(s): 'tenant'",
        ),
        (
            {"version": 1, "keys": [_entry(alowed_data_classes=["public"])]},
            "keys[0] (id 0123456789abcdef): unknown field(s): 'alowed_data_classes'",
        ),
        (
            {"version": 1, "keys": [OTHER, _entry(), _entry()]},
            "keys[2] (id 0123456789abcdef): duplicate key id",
        ),
        (
            {"version": 1, "keys": [_entry(id="XYZ")]},
            "keys[0]: 'id' must be 16 lowercase hex characters",
        ),
        (
            {"version": 1, "keys": [_entry(hash="abc")]},
            "keys[0] (id 0123456789abcdef): 'hash' must be 64 lowercase hex characters",
        ),
        (
            {"version": 1, "keys": [_entry(hash_alg="sha1")]},
            "keys[0] (id 0123456789abcdef): 'hash_alg' must be 'hmac-sha256'",
        ),
        (
            {"version": 1, "keys": [_entry(tenant="")]},
            "keys[0] (id 0123456789abcdef): 'tenant' must be a non-empty string",
        ),
        (
            {"version": 1, "keys": [_entry(roles="admin")]},
            "keys[0] (id 0123456789abcdef): 'roles' must be a list of strings",
        ),
        (
            {
                "version": 1,
                "keys": [_entry(allowed_data_classes=["public"], default_data_class="internal")],
            },
            "keys[0] (id 0123456789abcdef): default_data_class 'internal' is not in "
            "allowed_data_classes",
        ),
        (
            {"version": 1, "keys": [_entry(created="2025-11-25T11:00:00")]},
            "keys[0] (id 0123456789abcdef): 'created' must carry a time zone (e.g. a trailing Z)",
        ),
        (
            {"version": 1, "keys": [_entry(revoked_at="yesterday")]},
            "keys[0] (id 0123456789abcdef): 'revoked_at' is not an ISO 8601 timestamp",
        ),
    ],
)
def test_invalid_keys_files_name_the_offending_entry(
    keys_path: Path, doc: object, message: str
) -> None:
    keys_path.write_text(json.dumps(doc))
    with pytest.raises(AuthConfigError) as excinfo:
        KeyStore.load(keys_path)
    assert str(excinfo.value) == f"{keys_path}: {message}"


def test_missing_and_empty_keys_files(keys_path: Path) -> None:
    with pytest.raises(AuthConfigError) as excinfo:
        KeyStore.load(keys_path)
    assert str(excinfo.value) == f"{keys_path}: keys file not found"
    assert len(KeyStore.load(keys_path, missing_ok=True)) == 0
    keys_path.write_text("\n")
    assert len(KeyStore.load(keys_path)) == 0


def test_a_valid_hand_written_file_loads(keys_path: Path) -> None:
    keys_path.write_text(
        json.dumps({"version": 1, "keys": [_entry(revoked_at="2025-11-26T00:00:00+00:00")]})
    )
    (record,) = KeyStore.load(keys_path).records()
    assert record.public_dict() == {
        "id": "0123456789abcdef",
        "tenant": "acme",
        "user": None,
        "roles": ["analyst"],
        "allowed_data_classes": None,
        "default_data_class": None,
        "created": "2025-11-25T11:00:00Z",
        "revoked_at": "2025-11-26T00:00:00Z",
    }


# --- JWT fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key_2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str, **extra: str) -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, **extra}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig"}


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "tenant": "enterprise-acme",
        "roles": ["analyst", "admin"],
        "iat": now,
        "exp": now + 300,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v != "<drop>"}


def sign(key: Any, alg: str, kid: str | None, **changes: Any) -> str:
    headers = {} if kid is None else {"kid": kid}
    return jwt.encode(claims(**changes), key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token built by hand, for algorithms PyJWT refuses to produce."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = (
        b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), "sha256").digest()
    )
    return f"{signing_input}.{b64(signature)}"


ALICE = Identity(
    tenant="enterprise-acme",
    user="alice",
    roles=("analyst", "admin"),
    key_id=None,
    allowed_data_classes=None,
    default_data_class=None,
    method="jwt",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Jwks:
    """A JWKS endpoint on a real loopback aiohttp server; tests change ``doc``."""

    doc: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    status: int = 200
    hits: int = 0
    url: str = ""


@pytest.fixture
async def jwks(
    aiohttp_server: Callable[..., Awaitable[Any]],
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> Jwks:
    state = Jwks(doc={"keys": [rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1")]})

    async def handler(_request: web.Request) -> web.Response:
        state.hits += 1
        if state.status != 200:
            return web.Response(status=state.status, text="unavailable")
        return web.json_response(state.doc)

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    state.url = str(server.make_url("/.well-known/jwks.json"))
    return state


MakeVerifier = Callable[..., JwtVerifier]


@pytest.fixture
async def make_verifier(jwks: Jwks) -> AsyncIterator[MakeVerifier]:
    made: list[JwtVerifier] = []

    def make(clock: Clock | None = None, **overrides: Any) -> JwtVerifier:
        settings: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks.url}
        settings.update(overrides)
        verifier = JwtVerifier(JwtSettings(**settings), clock=clock or Clock())
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.close()


# --- JWT: accepted tokens -------------------------------------------------------


async def test_valid_rs256_and_es256_tokens_from_a_jwks_url(
    make_verifier: MakeVerifier,
    jwks: Jwks,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    verifier = make_verifier()
    assert await verifier.verify(sign(rsa_key, "RS256", "rsa-1")) == ALICE
    assert await verifier.verify(sign(ec_key, "ES256", "ec-1")) == ALICE
    assert jwks.hits == 1  # fetched once, then cached


async def test_roles_as_a_space_separated_string_and_absent(
    make_verifier: MakeVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = make_verifier()
    token = sign(rsa_key, "RS256", "rsa-1", roles="analyst admin analyst")
    assert await verifier.verify(token) == ALICE
    token = sign(rsa_key, "RS256", "rsa-1", roles="<drop>", sub="<drop>")
    assert await verifier.verify(token) == replace(ALICE, roles=(), user=None)


async def test_configurable_and_nested_claims(
    make_verifier: MakeVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = make_verifier(
        tenant_claim="https://kamiwaza.ai/tenant",
        user_claim="email",
        roles_claim="realm_access.roles",
        data_classes_claim="data_classes",
        audience=("other", AUDIENCE),
    )
    token = sign(
        rsa_key,
        "RS256",
        "rsa-1",
        tenant="<drop>",
        roles="<drop>",
        aud=[AUDIENCE, "someone-else"],
        email="alice@example.com",
        realm_access={"roles": ["analyst"]},
        data_classes="public internal",
        **{"https://kamiwaza.ai/tenant": "globex"},
    )
    assert await verifier.verify(token) == Identity(
        tenant="globex",
        user="alice@example.com",
        roles=("analyst",),
        key_id=None,
        allowed_data_classes=("public", "internal"),
        default_data_class=None,
        method="jwt",
    )


async def test_expiry_within_the_leeway_is_accepted(
    make_verifier: MakeVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = sign(rsa_key, "RS256", "rsa-1", exp=int(time.time()) - 10)
    assert await make_verifier(leeway_s=30).verify(token) == ALICE


async def test_jwks_from_a_file(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "jwks.json"
    oct_key = {"kty": "oct", "k": b64(b"s" * 32), "kid": "hmac"}
    enc_key = rsa_jwk(rsa_key, "enc", use="enc")
    path.write_text(
        json.dumps({"keys": [oct_key, enc_key, rsa_jwk(rsa_key, "rsa-1", alg="RS256")]})
    )
    verifier = JwtVerifier(JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=str(path)))
    assert await verifier.verify(sign(rsa_key, "RS256", "rsa-1")) == ALICE
    # Without kid, the single usable key leaves no doubt.
    assert await verifier.verify(sign(rsa_key, "RS256", None)) == ALICE
    with pytest.raises(AuthenticationError, match=r"^token is signed by an unknown key$"):
        await verifier.verify(sign(ec_key, "ES256", "ec-1"))
    await verifier.close()


async def test_short_rsa_keys_are_refused(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_jwk(weak, "weak")]}))
    verifier = JwtVerifier(JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=str(path)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        token = sign(weak, "RS256", "weak")
    with pytest.raises(AuthenticationError) as excinfo:
        await verifier.verify(token)
    assert unauthenticated(excinfo, token) == (
        401,
        "token signing key is not acceptable",
        "invalid_token",
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "JWKS file is not valid JSON"),
        ('{"keys": {}}', "JWKS must be a JSON object with a 'keys' list"),
        (
            '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}',
            "JWKS has no usable signing key for algorithms ES256, RS256",
        ),
    ],
)
def test_bad_jwks_files_fail_at_start_up(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(content)
    with pytest.raises(AuthConfigError) as excinfo:
        JwtVerifier(JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=str(path)))
    assert str(excinfo.value) == f"{path}: {message}"


# --- JWT: refused tokens --------------------------------------------------------


def _cases(
    rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> dict[str, tuple[str, str]]:
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    good = sign(rsa_key, "RS256", "rsa-1")
    head, _, sig = good.split(".")
    tampered_body = b64(json.dumps(claims(tenant="globex")).encode())
    return {
        "expired": (sign(rsa_key, "RS256", "rsa-1", exp=now - 120), "token has expired"),
        "not yet valid": (sign(rsa_key, "RS256", "rsa-1", nbf=now + 600), "token is not valid yet"),
        "wrong iss": (
            sign(rsa_key, "RS256", "rsa-1", iss="https://evil/"),
            "token issuer is not accepted",
        ),
        "wrong aud": (
            sign(rsa_key, "RS256", "rsa-1", aud="other"),
            "token audience is not accepted",
        ),
        "no exp": (sign(rsa_key, "RS256", "rsa-1", exp="<drop>"), "token has no 'exp' claim"),
        "no iss": (sign(rsa_key, "RS256", "rsa-1", iss="<drop>"), "token has no 'iss' claim"),
        "no aud": (sign(rsa_key, "RS256", "rsa-1", aud="<drop>"), "token has no 'aud' claim"),
        "no tenant": (
            sign(rsa_key, "RS256", "rsa-1", tenant="<drop>"),
            "token has no 'tenant' claim",
        ),
        "tenant not a string": (
            sign(rsa_key, "RS256", "rsa-1", tenant=["a", "b"]),
            "token's 'tenant' claim is not a usable tenant name",
        ),
        "roles not a list": (
            sign(rsa_key, "RS256", "rsa-1", roles={"admin": True}),
            "token's 'roles' claim must be a list or a string",
        ),
        "alg none": (
            forge({"alg": "none", "kid": "rsa-1"}, claims(), None),
            "token algorithm is not accepted",
        ),
        "HS256 with the public key as secret": (
            forge({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, claims(), public_pem),
            "token algorithm is not accepted",
        ),
        "RS384 not in the allow-list": (
            sign(rsa_key, "RS384", "rsa-1"),
            "token algorithm is not accepted",
        ),
        "unknown kid": (sign(rsa_key_2, "RS256", "rsa-9"), "token is signed by an unknown key"),
        "signed by another key": (sign(rsa_key_2, "RS256", "rsa-1"), "token signature is invalid"),
        "tampered payload": (f"{head}.{tampered_body}.{sig}", "token signature is invalid"),
        "RSA token on the EC kid": (
            sign(rsa_key, "RS256", "ec-1"),
            "token algorithm does not match its signing key",
        ),
        "garbage": ("eyJhbGciOi.eyJzdWIiOi.c2ln", "malformed token"),
    }


CASE_NAMES = [
    "expired",
    "not yet valid",
    "wrong iss",
    "wrong aud",
    "no exp",
    "no iss",
    "no aud",
    "no tenant",
    "tenant not a string",
    "roles not a list",
    "alg none",
    "HS256 with the public key as secret",
    "RS384 not in the allow-list",
    "unknown kid",
    "signed by another key",
    "tampered payload",
    "RSA token on the EC kid",
    "garbage",
]


@pytest.mark.parametrize("case", CASE_NAMES)
async def test_unacceptable_tokens_are_401(
    case: str,
    make_verifier: MakeVerifier,
    rsa_key: rsa.RSAPrivateKey,
    rsa_key_2: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    token, message = _cases(rsa_key, rsa_key_2, ec_key)[case]
    authenticator = Authenticator(jwt=make_verifier())
    with pytest.raises(AuthenticationError) as excinfo:
        await authenticator.authenticate({"Authorization": f"Bearer {token}", **SPOOFED})
    assert unauthenticated(excinfo, token) == (401, message, "invalid_token")
    assert excinfo.value.headers == {"WWW-Authenticate": 'Bearer realm="kamiwaza"'}


def test_cases_cover_every_name(
    rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    assert sorted(_cases(rsa_key, rsa_key_2, ec_key)) == sorted(CASE_NAMES)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"algorithms": ("RS256", "none")}, "JWT: algorithm 'none' is not allowed; choose from "),
        ({"algorithms": ("HS256",)}, "JWT: algorithm 'HS256' is not allowed; choose from "),
        ({"algorithms": ()}, "JWT: algorithms must be a non-empty list"),
        ({"jwks_file": "jwks.json"}, "JWT: set exactly one of jwks_url and jwks_file"),
        ({"jwks_url": None}, "JWT: set exactly one of jwks_url and jwks_file"),
        ({"jwks_url": "file:///etc/jwks.json"}, "JWT: jwks_url must be an http:// or https:// URL"),
        ({"issuer": ""}, "JWT: issuer must be set"),
        ({"audience": ()}, "JWT: audience must be a non-empty string or list of strings"),
        ({"leeway_s": 3600}, "JWT: leeway_s must be between 0 and 300"),
        ({"tenant_claim": ""}, "JWT: tenant_claim must be a non-empty claim name"),
    ],
)
def test_unsafe_jwt_settings_are_refused(overrides: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_url": "https://idp.example.com/jwks",
    }
    settings.update(overrides)
    with pytest.raises(AuthConfigError) as excinfo:
        JwtSettings(**settings)
    text = str(excinfo.value)
    if message.endswith("choose from "):
        assert (
            text == message + "ES256, ES384, ES512, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512"
        )
    else:
        assert text == message


# --- JWT: JWKS caching, rotation and outages ------------------------------------


async def test_key_rotation_refetches_at_most_once_per_interval(
    make_verifier: MakeVerifier,
    jwks: Jwks,
    rsa_key: rsa.RSAPrivateKey,
    rsa_key_2: rsa.RSAPrivateKey,
) -> None:
    clock = Clock()
    verifier = make_verifier(clock, jwks_refetch_interval_s=60)
    assert await verifier.verify(sign(rsa_key, "RS256", "rsa-1")) == ALICE
    assert jwks.hits == 1

    # The provider rotates: a token signed by the new key triggers one refetch.
    jwks.doc = {"keys": [rsa_jwk(rsa_key_2, "rsa-2")]}
    clock.now += 61
    assert await verifier.verify(sign(rsa_key_2, "RS256", "rsa-2")) == ALICE
    assert jwks.hits == 2

    # Made-up kids do not hammer the provider: no refetch within the interval...
    for _ in range(5):
        with pytest.raises(AuthenticationError, match=r"^token is signed by an unknown key$"):
            await verifier.verify(sign(rsa_key, "RS256", "made-up"))
    assert jwks.hits == 2
    # ...and one once it has passed. The withdrawn key is gone with it.
    clock.now += 61
    with pytest.raises(AuthenticationError, match=r"^token is signed by an unknown key$"):
        await verifier.verify(sign(rsa_key, "RS256", "rsa-1"))
    assert jwks.hits == 3


async def test_concurrent_tokens_with_a_new_kid_share_one_fetch(
    make_verifier: MakeVerifier,
    jwks: Jwks,
    rsa_key: rsa.RSAPrivateKey,
    rsa_key_2: rsa.RSAPrivateKey,
) -> None:
    clock = Clock()
    verifier = make_verifier(clock)
    await verifier.refresh()
    jwks.doc = {"keys": [rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rsa_key_2, "rsa-2")]}
    clock.now += 61
    token = sign(rsa_key_2, "RS256", "rsa-2")
    results = await asyncio.gather(*(verifier.verify(token) for _ in range(20)))
    assert results == [ALICE] * 20
    assert jwks.hits == 2


async def test_stale_jwks_is_refreshed_in_the_background(
    make_verifier: MakeVerifier,
    jwks: Jwks,
    rsa_key: rsa.RSAPrivateKey,
    rsa_key_2: rsa.RSAPrivateKey,
) -> None:
    clock = Clock()
    verifier = make_verifier(clock, jwks_max_age_s=3600)
    token = sign(rsa_key, "RS256", "rsa-1")
    assert await verifier.verify(token) == ALICE
    jwks.doc = {"keys": [rsa_jwk(rsa_key_2, "rsa-2")]}  # rsa-1 withdrawn
    clock.now += 3601
    # The request that notices the age is served from the cache, without waiting.
    assert await verifier.verify(token) == ALICE
    # Once the background refresh has installed the new set, rsa-1 is refused.
    refused: str | None = None
    deadline = time.monotonic() + 5
    while refused is None and time.monotonic() < deadline:
        try:
            await verifier.verify(token)
        except AuthenticationError as err:
            refused = err.message
        await asyncio.sleep(0.01)
    assert refused == "token is signed by an unknown key"
    assert jwks.hits == 2


async def test_unreachable_jwks_is_503_then_recovers(
    make_verifier: MakeVerifier, jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = Clock()
    verifier = make_verifier(clock)
    jwks.status = 500
    token = sign(rsa_key, "RS256", "rsa-1")
    with pytest.raises(AuthUnavailableError) as excinfo:
        await verifier.verify(token)
    err = excinfo.value
    assert (err.status, err.message, err.code) == (
        503,
        "cannot verify the token now: the identity provider's signing keys are unavailable",
        "authentication_unavailable",
    )
    with pytest.raises(AuthConfigError, match=r"^JWKS answered HTTP 500$"):
        await verifier.refresh()
    jwks.status = 200
    clock.now += 61
    assert await verifier.verify(token) == ALICE


async def test_redirects_are_not_followed(
    aiohttp_server: Callable[..., Awaitable[Any]], jwks: Jwks
) -> None:
    async def redirect(_request: web.Request) -> web.Response:
        raise web.HTTPFound(jwks.url)

    app = web.Application()
    app.router.add_get("/jwks", redirect)
    server = await aiohttp_server(app)
    verifier = JwtVerifier(
        JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=str(server.make_url("/jwks")))
    )
    with pytest.raises(AuthConfigError, match=r"^JWKS answered HTTP 302$"):
        await verifier.refresh()
    await verifier.close()
    assert jwks.hits == 0


# --- Authenticator ----------------------------------------------------------------


@pytest.fixture
def acme_key(store: KeyStore) -> tuple[str, Identity]:
    record, api_key = store.create(
        tenant="enterprise-acme", user="u-17", roles=["analyst"], allowed_data_classes=["internal"]
    )
    return api_key, record.identity()


@pytest.mark.parametrize(
    "make_headers",
    [
        lambda key: {"Authorization": f"Bearer {key}"},
        lambda key: {"authorization": f"bearer  {key} "},
        lambda key: {"api-key": key},
        lambda key: {"X-Api-Key": key},
        lambda key: {"Authorization": f"Bearer {key}", "x-api-key": key},
        lambda key: CIMultiDictProxy(CIMultiDict([("AUTHORIZATION", f"Bearer {key}")])),
    ],
)
async def test_api_key_in_any_supported_header(
    store: KeyStore,
    acme_key: tuple[str, Identity],
    make_headers: Callable[[str], dict[str, str]],
) -> None:
    api_key, identity = acme_key
    assert await Authenticator(keys=store).authenticate(make_headers(api_key)) == identity


async def test_identity_headers_are_ignored(
    store: KeyStore, acme_key: tuple[str, Identity]
) -> None:
    api_key, identity = acme_key
    headers = {"Authorization": f"Bearer {api_key}", **SPOOFED, "X-Kamiwaza-Tenant": "evil"}
    assert await Authenticator(keys=store).authenticate(headers) == Identity(
        tenant="enterprise-acme",
        user="u-17",
        roles=("analyst",),
        key_id=identity.key_id,
        allowed_data_classes=("internal",),
        default_data_class=None,
        method="api_key",
    )
    with pytest.raises(AuthenticationError) as excinfo:
        await Authenticator(keys=store).authenticate(SPOOFED)
    assert unauthenticated(excinfo) == (
        401,
        "missing credential; send 'Authorization: Bearer <API key or JWT>'",
        "missing_credential",
    )


async def test_jwt_identity_ignores_identity_headers(
    make_verifier: MakeVerifier, store: KeyStore, rsa_key: rsa.RSAPrivateKey
) -> None:
    authenticator = Authenticator(keys=store, jwt=make_verifier())
    token = sign(rsa_key, "RS256", "rsa-1")
    assert (
        await authenticator.authenticate({"Authorization": f"Bearer {token}", **SPOOFED}) == ALICE
    )


@pytest.mark.parametrize(
    ("headers", "message", "code"),
    [
        (
            {},
            "missing credential; send 'Authorization: Bearer <API key or JWT>'",
            "missing_credential",
        ),
        ({"Authorization": "Bearer "}, "empty credential", "missing_credential"),
        (
            {"api-key": "", "Authorization": ""},  # blank headers carry nothing
            "missing credential; send 'Authorization: Bearer <API key or JWT>'",
            "missing_credential",
        ),
        (
            {"Authorization": "Basic dXNlcjpwYXNz"},
            "unsupported Authorization scheme; use 'Authorization: Bearer <key>'",
            "invalid_api_key",
        ),
        (
            {"Authorization": "Bearer kw_a", "x-api-key": "kw_b"},
            "the request carries more than one different credential",
            "invalid_api_key",
        ),
        (
            {"Authorization": "Bearer sk-proj-abcdef"},
            "unrecognised credential; expected an API key (kw_...) or a JWT",
            "invalid_api_key",
        ),
        (
            {"Authorization": "Bearer a.b.c"},
            "JWTs are not accepted by this gateway",
            "invalid_token",
        ),
        ({"Authorization": "Bearer kw_" + "x" * 9000}, "credential is too long", "invalid_api_key"),
        (
            {"Authorization": f"Bearer kw_{'0' * 16}_{'a' * 43}"},
            "invalid API key",
            "invalid_api_key",
        ),
    ],
)
async def test_requests_without_an_acceptable_credential_are_401(
    store: KeyStore, headers: dict[str, str], message: str, code: str
) -> None:
    with pytest.raises(AuthenticationError) as excinfo:
        await Authenticator(keys=store).authenticate(headers)
    secrets_ = [v.split()[-1] for v in headers.values() if v.strip()]
    assert unauthenticated(excinfo, *secrets_) == (401, message, code)
    assert excinfo.value.headers == {"WWW-Authenticate": 'Bearer realm="kamiwaza"'}


async def test_api_keys_refused_when_only_jwt_is_configured(
    make_verifier: MakeVerifier, acme_key: tuple[str, Identity]
) -> None:
    with pytest.raises(AuthenticationError, match=r"^API keys are not accepted by this gateway$"):
        await Authenticator(jwt=make_verifier()).authenticate({"api-key": acme_key[0]})


def test_an_authenticator_needs_a_credential_source() -> None:
    with pytest.raises(
        AuthConfigError, match=r"^no credential source: configure a keys file, JWT, or both$"
    ):
        Authenticator()

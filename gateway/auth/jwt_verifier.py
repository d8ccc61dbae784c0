"""JWT authentication: bearer tokens from an identity provider, verified against
its JWKS.

A token is accepted only if its header names an algorithm from a fixed
allow-list (asymmetric only: never ``none``, never ``HS*``, so a public key can
never be used as an HMAC secret), it is signed by a key of the JWKS whose type
fits that algorithm, and its ``iss``, ``aud`` and ``exp`` claims are present and
valid (``exp``/``nbf``/``iat`` with a small leeway). Tenant, user and roles are
then read from configurable claims; a token without a tenant is refused.

The JWKS comes from an http(s) URL, fetched with aiohttp (never blocking the
event loop) and cached, or from a local file. It is fetched again when a token
names an unknown ``kid`` (key rotation), at most once per
``jwks_refetch_interval_s`` so that made-up ``kid`` values cannot turn the
gateway into a load generator against the identity provider, and in the
background once the cached copy is older than ``jwks_max_age_s`` so that keys
the provider withdraws stop being accepted.

Claim names are looked up as given first, then as a dotted path into nested
objects (``realm_access.roles``), so URL-style namespaced claims such as
``https://example.com/tenant`` work as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt

from gateway.auth.identity import AuthConfigError, AuthUnavailableError, Identity, validate_name
from gateway.errors import AuthenticationError
from observability.hosts import is_loopback_host

log = logging.getLogger(__name__)

# Asymmetric signature algorithms only: with a symmetric one the verification
# key would be a shared secret, and a JWKS public key must never be usable as one.
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_ALGORITHMS = ("RS256", "ES256")

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# Which algorithms a key of each (kty, crv) may verify; anything else is ignored.
_ALGORITHMS_FOR_KEY: Mapping[tuple[str, str | None], frozenset[str]] = {
    ("RSA", None): _RSA_ALGORITHMS,
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
    ("OKP", "Ed448"): frozenset({"EdDSA"}),
}
_REQUIRED_CLAIMS = ["exp", "iss", "aud"]
_TIME_CLAIMS = ("exp", "nbf", "iat")
_MAX_LEEWAY_S = 300.0
_MAX_JWKS_BYTES = 1 << 20
_MISSING = object()


@dataclass(frozen=True)
class JwtSettings:
    """How JWTs are verified and mapped to an :class:`Identity`.

    Exactly one of ``jwks_url`` and ``jwks_file`` must be set. Invalid settings
    raise :class:`AuthConfigError` on construction.
    """

    issuer: str
    audience: str | tuple[str, ...]
    jwks_url: str | None = None
    jwks_file: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_s: float = 30.0
    tenant_claim: str = "tenant"
    user_claim: str = "sub"
    roles_claim: str = "roles"
    # None: tokens place no limit on data classes (the tenant's floor still applies).
    data_classes_claim: str | None = None
    jwks_refetch_interval_s: float = 60.0
    jwks_max_age_s: float = 3600.0
    jwks_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise AuthConfigError("JWT: set exactly one of jwks_url and jwks_file")
        if self.jwks_url is not None:
            _check_jwks_url(self.jwks_url)
        if not self.issuer:
            raise AuthConfigError("JWT: issuer must be set")
        audiences = (self.audience,) if isinstance(self.audience, str) else self.audience
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise AuthConfigError("JWT: audience must be a non-empty string or list of strings")
        if isinstance(self.algorithms, str) or not self.algorithms:
            raise AuthConfigError("JWT: algorithms must be a non-empty list")
        for alg in self.algorithms:
            if alg not in SUPPORTED_ALGORITHMS:
                raise AuthConfigError(
                    f"JWT: algorithm {alg!r} is not allowed; choose from "
                    f"{', '.join(sorted(SUPPORTED_ALGORITHMS))}"
                )
        if not 0 <= self.leeway_s <= _MAX_LEEWAY_S:
            raise AuthConfigError(f"JWT: leeway_s must be between 0 and {_MAX_LEEWAY_S:g}")
        for name in ("tenant_claim", "user_claim", "roles_claim"):
            if not getattr(self, name):
                raise AuthConfigError(f"JWT: {name} must be a non-empty claim name")
        if self.data_classes_claim == "":
            raise AuthConfigError("JWT: data_classes_claim must be a claim name or unset")
        for name in ("jwks_refetch_interval_s", "jwks_max_age_s", "jwks_timeout_s"):
            if getattr(self, name) < 0:
                raise AuthConfigError(f"JWT: {name} must not be negative")

    @property
    def source(self) -> str:
        """Where the keys come from, for messages."""
        return self.jwks_url or f"file {self.jwks_file}"


def _check_jwks_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AuthConfigError("JWT: jwks_url must be an http:// or https:// URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        # Allowed for in-cluster identity providers, but a JWKS fetched in clear
        # text over a network can be replaced by anyone on the path.
        log.warning("JWT: jwks_url %s is plain http on a non-loopback host", url)


def _build_key_table(
    doc: object, allowed: Iterable[str]
) -> dict[tuple[str | None, str], jwt.PyJWK]:
    """Map (kid, algorithm) to a verification key, for every usable key of a JWKS.

    Keys for encryption, of symmetric or unknown types, or whose type cannot
    verify any allowed algorithm are skipped: providers publish those too.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise AuthConfigError("JWKS must be a JSON object with a 'keys' list")
    allowed_set = frozenset(allowed)
    table: dict[tuple[str | None, str], jwt.PyJWK] = {}
    for index, jwk in enumerate(doc["keys"]):
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        kty, crv = jwk.get("kty"), jwk.get("crv")
        if not isinstance(kty, str) or not (crv is None or isinstance(crv, str)):
            continue
        usable = _ALGORITHMS_FOR_KEY.get((kty, None if kty == "RSA" else crv), frozenset())
        usable &= allowed_set
        if "alg" in jwk:
            usable &= {jwk["alg"]}
        for alg in sorted(usable):
            if (kid, alg) in table:
                log.warning("JWKS: key %d repeats kid %r; the first one is used", index, kid)
                continue
            try:
                table[(kid, alg)] = jwt.PyJWK(jwk, algorithm=alg)
            # The JWKS is remote input: one malformed key must not take the
            # others down with it, whatever PyJWT or cryptography raise for it.
            except (jwt.PyJWTError, ValueError, TypeError, KeyError) as err:
                log.warning("JWKS: key %d (kid %r) is unusable: %s", index, kid, type(err).__name__)
    if not table:
        raise AuthConfigError(
            f"JWKS has no usable signing key for algorithms {', '.join(sorted(allowed_set))}"
        )
    return table


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    if name in claims:
        return claims[name]
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _names_claim(value: Any, claim: str) -> tuple[str, ...]:
    """A list of names, or one space-separated string of them (OAuth ``scope`` style)."""
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list):
        raise AuthenticationError(
            f"token's {claim!r} claim must be a list or a string", code="invalid_token"
        )
    try:
        names = [validate_name(item, "name") for item in items]
    except ValueError:
        raise AuthenticationError(
            f"token's {claim!r} claim holds an unusable name", code="invalid_token"
        ) from None
    return tuple(dict.fromkeys(names))


# Fixed messages per failure: PyJWT's own messages may quote token content.
_DECODE_ERRORS: Sequence[tuple[type[jwt.PyJWTError], str]] = (
    (jwt.ExpiredSignatureError, "token has expired"),
    (jwt.ImmatureSignatureError, "token is not valid yet"),
    (jwt.InvalidIssuerError, "token issuer is not accepted"),
    (jwt.InvalidAudienceError, "token audience is not accepted"),
    (jwt.InvalidAlgorithmError, "token algorithm is not accepted"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.InvalidKeyError, "token signing key is not acceptable"),
    (jwt.DecodeError, "malformed token"),
)


class JwtVerifier:
    """Verifies JWTs against a cached JWKS and turns them into identities.

    Use one per process; call :meth:`close` on shutdown. :meth:`refresh` may be
    awaited at start-up to fail early on a bad JWKS; otherwise the first token
    triggers the first fetch.
    """

    def __init__(
        self,
        settings: JwtSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._session = session
        self._owns_session = session is None
        self._clock = clock
        self._keys: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._kids: frozenset[str | None] = frozenset()
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_attempt_failed = False
        # One fetch at a time: concurrent requests with the same new kid wait
        # for the fetch in flight instead of starting their own.
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self._audience: str | list[str] = (
            settings.audience if isinstance(settings.audience, str) else list(settings.audience)
        )
        if settings.jwks_file is not None:
            # Start-up, not the hot path: a broken file should stop the gateway now.
            self._install(self._read_file())

    @property
    def settings(self) -> JwtSettings:
        return self._settings

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
            self._background = None
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def refresh(self) -> None:
        """Load the JWKS now; raise :class:`AuthConfigError` if that fails.

        On failure the keys loaded before stay in use.
        """
        async with self._lock:
            await self._load_locked(raise_errors=True)

    async def verify(self, token: str) -> Identity:
        """The identity a JWT asserts; AuthenticationError (401) if it is not
        acceptable, AuthUnavailableError (503) if the JWKS cannot be obtained."""
        settings = self._settings
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise AuthenticationError("malformed token", code="invalid_token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in settings.algorithms:
            raise AuthenticationError("token algorithm is not accepted", code="invalid_token")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError("malformed token", code="invalid_token")

        self._maybe_refresh_in_background()
        key = self._find_key(kid, alg)
        if key is None and kid not in self._kids:
            await self._refresh_for_unknown_kid(kid, alg)
            key = self._find_key(kid, alg)
        if key is None:
            if self._last_attempt_failed:
                raise AuthUnavailableError(
                    "cannot verify the token now: the identity provider's signing keys "
                    "are unavailable"
                )
            if kid in self._kids:
                raise AuthenticationError(
                    "token algorithm does not match its signing key", code="invalid_token"
                )
            raise AuthenticationError("token is signed by an unknown key", code="invalid_token")

        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                issuer=settings.issuer,
                audience=self._audience,
                leeway=settings.leeway_s,
                options={"require": _REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
            )
        except jwt.MissingRequiredClaimError as err:
            raise AuthenticationError(
                f"token has no {err.claim!r} claim", code="invalid_token"
            ) from None
        except jwt.PyJWTError as err:
            message = next(
                (text for kind, text in _DECODE_ERRORS if isinstance(err, kind)), "invalid token"
            )
            raise AuthenticationError(message, code="invalid_token") from None
        except (OverflowError, ValueError, TypeError, RecursionError):
            # PyJWT lets some claim values through unmapped (e.g. `"exp": 1e400`).
            raise AuthenticationError("malformed token", code="invalid_token") from None
        for name in _TIME_CLAIMS:
            # RFC 7519: a NumericDate is a JSON number; PyJWT also takes "123".
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise AuthenticationError(
                    f"token's {name!r} claim must be a number (NumericDate)", code="invalid_token"
                )
        return self._identity(claims)

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        settings = self._settings
        tenant = _claim(claims, settings.tenant_claim)
        if tenant is _MISSING:
            raise AuthenticationError(
                f"token has no {settings.tenant_claim!r} claim", code="invalid_token"
            )
        try:
            validate_name(tenant, "tenant")
        except ValueError:
            raise AuthenticationError(
                f"token's {settings.tenant_claim!r} claim is not a usable tenant name",
                code="invalid_token",
            ) from None
        user = _claim(claims, settings.user_claim)
        if user is _MISSING:
            user = None
        elif not isinstance(user, str) or not user:
            raise AuthenticationError(
                f"token's {settings.user_claim!r} claim must be a non-empty string",
                code="invalid_token",
            )
        roles_value = _claim(claims, settings.roles_claim)
        roles = () if roles_value is _MISSING else _names_claim(roles_value, settings.roles_claim)
        allowed: tuple[str, ...] | None = None
        if settings.data_classes_claim is not None:
            value = _claim(claims, settings.data_classes_claim)
            if value is not _MISSING:
                allowed = _names_claim(value, settings.data_classes_claim)
        return Identity(
            tenant=tenant,
            user=user,
            roles=roles,
            key_id=None,
            allowed_data_classes=allowed,
            default_data_class=None,
            method="jwt",
        )

    def _find_key(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        key = self._keys.get((kid, alg))
        if key is None and kid is None:
            # A token without kid is accepted only when the JWKS leaves no doubt
            # about which key to try.
            candidates = [k for (_, key_alg), k in self._keys.items() if key_alg == alg]
            if len(candidates) == 1:
                return candidates[0]
        return key

    async def _refresh_for_unknown_kid(self, kid: str | None, alg: str) -> None:
        async with self._lock:
            if self._find_key(kid, alg) is not None:
                return  # fetched by a concurrent request while we waited
            if self._attempted_recently():
                return
            await self._load_locked(raise_errors=False)

    def _attempted_recently(self) -> bool:
        return (
            self._attempted_at is not None
            and self._clock() - self._attempted_at < self._settings.jwks_refetch_interval_s
        )

    def _maybe_refresh_in_background(self) -> None:
        if (
            self._fetched_at is None
            or self._clock() - self._fetched_at < self._settings.jwks_max_age_s
            or self._lock.locked()
            or (self._background is not None and not self._background.done())
            or self._attempted_recently()
        ):
            return
        # The request goes on with the cached keys; it must not wait on the
        # network just because the cache reached its age.
        self._background = asyncio.get_running_loop().create_task(self._background_refresh())

    async def _background_refresh(self) -> None:
        async with self._lock:
            if not self._attempted_recently():
                await self._load_locked(raise_errors=False)

    async def _load_locked(self, *, raise_errors: bool) -> None:
        self._attempted_at = self._clock()
        try:
            if self._settings.jwks_file is not None:
                table = await asyncio.to_thread(self._read_file)
            else:
                table = _build_key_table(await self._fetch_url(), self._settings.algorithms)
        except AuthConfigError as err:
            self._last_attempt_failed = True
            log.warning("JWT: cannot load the JWKS (%s): %s", self._settings.source, err)
            if raise_errors:
                raise
            return
        self._install(table)

    def _install(self, table: dict[tuple[str | None, str], jwt.PyJWK]) -> None:
        self._keys = table
        self._kids = frozenset(kid for kid, _ in table)
        self._fetched_at = self._clock()
        self._last_attempt_failed = False

    def _read_file(self) -> dict[tuple[str | None, str], jwt.PyJWK]:
        path = Path(self._settings.jwks_file or "")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise AuthConfigError(f"{path}: cannot read JWKS file: {err.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise AuthConfigError(f"{path}: JWKS file is not valid JSON") from None
        try:
            return _build_key_table(doc, self._settings.algorithms)
        except AuthConfigError as err:
            raise AuthConfigError(f"{path}: {err}") from None

    async def _fetch_url(self) -> object:
        url = self._settings.jwks_url
        assert url is not None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=self._settings.jwks_timeout_s)
        try:
            async with self._session.get(
                url,
                timeout=timeout,
                allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status != 200:
                    raise AuthConfigError(f"JWKS answered HTTP {response.status}")
                if (response.content_length or 0) > _MAX_JWKS_BYTES:
                    raise AuthConfigError("JWKS response is too large")
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > _MAX_JWKS_BYTES:
                        raise AuthConfigError("JWKS response is too large")
        except (aiohttp.ClientError, TimeoutError) as err:
            raise AuthConfigError(f"JWKS fetch failed: {type(err).__name__}: {err}") from None
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise AuthConfigError("JWKS response is not valid JSON") from None

"""The request-facing entry point: find the credential in the request headers and
hand it to the source that can verify it.

Accepted carriers: ``Authorization: Bearer <credential>`` (OpenAI SDKs), and
``api-key`` (Azure OpenAI SDKs) or ``x-api-key`` (Anthropic SDKs). A credential
beginning with the API key prefix is an API key; one of three dot-separated
parts is a JWT. Headers that claim an identity (``X-Tenant``, ``X-User``,
``X-Roles`` and the like) are never read: identity comes only from a verified
credential.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.auth.identity import AuthConfigError, Identity
from gateway.auth.jwt_verifier import JwtVerifier
from gateway.auth.keys import API_KEY_PREFIX, KeyStore
from gateway.errors import AuthenticationError

_API_KEY_HEADERS = frozenset({"api-key", "x-api-key"})
# RFC 9110: a 401 carries a challenge naming the scheme the client should use.
WWW_AUTHENTICATE = 'Bearer realm="kamiwaza"'
# Far above any real API key or JWT; bounds the work done on garbage.
_MAX_CREDENTIAL_LENGTH = 8192


def _credential(headers: Mapping[str, str]) -> str:
    """The one credential the request carries (header names are case-insensitive)."""
    found: set[str] = set()
    for name, raw in headers.items():
        lowered = name.lower()
        if lowered != "authorization" and lowered not in _API_KEY_HEADERS:
            continue
        value = raw.strip()
        if not value:
            continue  # a blank header carries no credential
        if lowered == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer":
                raise AuthenticationError(
                    "unsupported Authorization scheme; use 'Authorization: Bearer <key>'"
                )
            found.add(token.strip())
        else:
            found.add(value)
    if not found:
        raise AuthenticationError(
            "missing credential; send 'Authorization: Bearer <API key or JWT>'",
            code="missing_credential",
        )
    if len(found) > 1:
        # Proxies and SDKs may each read a different one: refuse the ambiguity.
        raise AuthenticationError("the request carries more than one different credential")
    token = found.pop()
    if not token:
        raise AuthenticationError("empty credential", code="missing_credential")
    if len(token) > _MAX_CREDENTIAL_LENGTH:
        raise AuthenticationError("credential is too long")
    return token


def _looks_like_jwt(token: str) -> bool:
    # An empty signature part still counts: an unsigned ("alg": "none") token
    # should be refused by the verifier with a precise reason.
    parts = token.split(".")
    return len(parts) == 3 and bool(parts[0]) and bool(parts[1]) and " " not in token


class Authenticator:
    """Authenticates requests with API keys, JWTs, or both."""

    def __init__(self, *, keys: KeyStore | None = None, jwt: JwtVerifier | None = None) -> None:
        if keys is None and jwt is None:
            raise AuthConfigError("no credential source: configure a keys file, JWT, or both")
        self._keys = keys
        self._jwt = jwt

    @property
    def keys(self) -> KeyStore | None:
        return self._keys

    @property
    def jwt(self) -> JwtVerifier | None:
        return self._jwt

    async def authenticate(self, headers: Mapping[str, str]) -> Identity:
        """The caller's identity; AuthenticationError (401, with a
        ``WWW-Authenticate`` challenge) if there is no acceptable credential.

        JWT verification may raise AuthUnavailableError (503) while the JWKS
        cannot be fetched.
        """
        try:
            token = _credential(headers)
            if token.startswith(API_KEY_PREFIX):
                if self._keys is None:
                    raise AuthenticationError("API keys are not accepted by this gateway")
                return self._keys.verify(token)
            if _looks_like_jwt(token):
                if self._jwt is None:
                    raise AuthenticationError(
                        "JWTs are not accepted by this gateway", code="invalid_token"
                    )
                return await self._jwt.verify(token)
            raise AuthenticationError(
                f"unrecognised credential; expected an API key ({API_KEY_PREFIX}...) or a JWT"
            )
        except AuthenticationError as err:
            err.headers.setdefault("WWW-Authenticate", WWW_AUTHENTICATE)
            raise

    async def close(self) -> None:
        if self._jwt is not None:
            await self._jwt.close()

"""Authentication: who is calling, established only from a verified credential.

- :class:`Authenticator` is what the request path calls:
  ``await authenticator.authenticate(request.headers) -> Identity``.
- :class:`KeyStore` holds the hashed API keys of a keys file (format in
  :mod:`gateway.auth.keys`); ``kamiwaza keys`` manages that file.
- :class:`JwtVerifier` checks JWTs against a JWKS (:class:`JwtSettings`).

Client headers such as ``X-Tenant`` never contribute to an :class:`Identity`.
"""

from __future__ import annotations

from gateway.auth.authenticator import WWW_AUTHENTICATE, Authenticator
from gateway.auth.identity import (
    AuthConfigError,
    AuthMethod,
    AuthUnavailableError,
    Identity,
    validate_name,
)
from gateway.auth.jwt_verifier import (
    DEFAULT_ALGORITHMS,
    SUPPORTED_ALGORITHMS,
    JwtSettings,
    JwtVerifier,
)
from gateway.auth.keys import API_KEY_PREFIX, KeyRecord, KeyStore, UnknownKeyError

__all__ = [
    "API_KEY_PREFIX",
    "DEFAULT_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "WWW_AUTHENTICATE",
    "AuthConfigError",
    "AuthMethod",
    "AuthUnavailableError",
    "Authenticator",
    "Identity",
    "JwtSettings",
    "JwtVerifier",
    "KeyRecord",
    "KeyStore",
    "UnknownKeyError",
    "validate_name",
]

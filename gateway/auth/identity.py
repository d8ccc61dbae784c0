"""Who is calling: the :class:`Identity` every authenticated request carries, and
the exceptions shared by the credential sources.

An identity is built only from a verified credential (an API key from the keys
file, or a JWT checked against a JWKS); nothing in it ever comes from a bare
client header such as ``X-Tenant``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.errors import ConfigError, GatewayError

AuthMethod = Literal["api_key", "jwt"]

_MAX_NAME_LENGTH = 256


class AuthConfigError(ConfigError):
    """The authentication configuration is unusable: a malformed keys file, a bad
    JWKS file, an invalid JWT setting. Raised at start-up or on reload, never for
    a client's credential (those are :class:`gateway.errors.AuthenticationError`)."""


class AuthUnavailableError(GatewayError):
    """A credential cannot be checked right now because the JWKS source is
    unreachable (503). Distinct from 401 so that clients retry instead of
    concluding that their token is bad; still fails closed."""

    status = 503
    type = "authentication_unavailable"
    code = "authentication_unavailable"


@dataclass(frozen=True, slots=True)
class Identity:
    """The authenticated caller.

    ``allowed_data_classes`` is ``None`` when the credential places no limit on
    data classes (the tenant's floor still applies elsewhere); ``key_id`` is the
    API key's id, ``None`` for JWTs.
    """

    tenant: str
    user: str | None
    roles: tuple[str, ...]
    key_id: str | None
    allowed_data_classes: tuple[str, ...] | None
    default_data_class: str | None
    method: AuthMethod

    def allows_data_class(self, data_class: str) -> bool:
        """Whether this credential may send requests of ``data_class``."""
        return self.allowed_data_classes is None or data_class in self.allowed_data_classes


def validate_name(value: object, what: str) -> str:
    """Check a tenant, user, role or data-class name; raise ValueError if unusable.

    Names end up in OPA input, audit records and logs, so control characters and
    surrounding whitespace are refused.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if value != value.strip():
        raise ValueError(f"{what} must not start or end with whitespace")
    if len(value) > _MAX_NAME_LENGTH:
        raise ValueError(f"{what} is longer than {_MAX_NAME_LENGTH} characters")
    if any(not ch.isprintable() for ch in value):
        raise ValueError(f"{what} contains control characters")
    return value

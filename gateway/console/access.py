"""Who may use the console: an admin credential, from where the setting allows.

The console shows every tenant's requests, the policy and the registry, so it
takes what the model API takes (an API key or a JWT, verified by the
gateway's one :class:`~gateway.auth.Authenticator`) and one more thing: the
`console_admin_role` (default `admin`) among the credential's roles. With
`console: loopback` (the default) it answers only clients on the loopback
interface; `console: any` opens it to every client that can reach the
gateway (put it behind TLS), `console: off` removes it.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from gateway.auth import Identity
from gateway.errors import PermissionDeniedError
from gateway.state import AUTHENTICATOR, SETTINGS


def is_loopback(remote: str | None) -> bool:
    """Whether a peer address is on the loopback interface (a unix socket is)."""
    if remote is None:
        return True
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_client(request: web.Request) -> None:
    """Refuse a non-loopback client while the console is loopback-only (403)."""
    if request.app[SETTINGS].console == "loopback" and not is_loopback(request.remote):
        raise PermissionDeniedError(
            "the console answers loopback clients only (setting console: loopback); "
            "set console: any to open it to other hosts",
            code="console_loopback_only",
        )


async def admin_identity(request: web.Request) -> Identity:
    """The caller, when it may use the console: 401 without a valid credential,
    403 without the admin role or from a refused address."""
    check_client(request)
    identity = await request.app[AUTHENTICATOR].authenticate(request.headers)
    role = request.app[SETTINGS].console_admin_role
    if role not in identity.roles:
        roles = ", ".join(identity.roles) or "none"
        raise PermissionDeniedError(
            f"the console is for administrators: this credential (tenant {identity.tenant}) "
            f"has no '{role}' role (its roles: {roles})",
            code="console_admin_required",
        )
    return identity

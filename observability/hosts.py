"""Host checks shared by everything that accepts a URL from configuration.

Plain http is tolerated (JWKS) or allowed (audit collector) only towards the
machine itself; this says what counts as the machine itself.
"""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

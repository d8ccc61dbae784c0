"""OAuth access tokens for Vertex AI, from a service account through google-auth.

google-auth signs a JWT assertion with the service account's private key and
exchanges it at the key's `token_uri` for an access token (about an hour long).
:class:`AccessTokens` caches that token for every request of the endpoint and
refreshes it `refresh_margin_s` before it expires, one refresh at a time
however many requests arrive meanwhile. google-auth's transport is blocking, so
the exchange runs in a worker thread and never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.oauth2 import service_account

from gateway.errors import ProviderConfigError
from gateway.providers.credentials import redact_values
from gateway.providers.failures import AttemptFailed, AttemptFailure

log = logging.getLogger(__name__)

CLOUD_PLATFORM_SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"
# Refresh this long before expiry (google-auth itself treats a token as stale
# 3 min 45 s before); requests keep the old token until the new one arrives.
REFRESH_MARGIN_S: Final = 300.0
TOKEN_REQUEST_TIMEOUT_S: Final = 10.0
TOKEN_UNAVAILABLE: Final = "upstream_auth_failed"


def load_service_account(info_text: str, where: str) -> service_account.Credentials:
    """Service-account credentials from the key file's JSON text.

    Errors name the endpoint, never a value from the key.
    """
    try:
        info = json.loads(info_text)
    except ValueError:
        raise ProviderConfigError(f"{where}: the service-account key is not JSON") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ProviderConfigError(
            f'{where}: the key must be a service-account key ("type": "service_account")'
        )
    try:
        credentials: service_account.Credentials = (
            service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=[CLOUD_PLATFORM_SCOPE]
            )
        )
    except (ValueError, KeyError, TypeError):
        raise ProviderConfigError(
            f"{where}: the service-account key is incomplete or its private key is invalid"
        ) from None
    return credentials


class _Transport(google.auth.transport.requests.Request):
    """google-auth's requests transport, bounded in time and blind to proxy
    variables (as the forwarder is)."""

    def __init__(self, timeout_s: float) -> None:
        session = requests.Session()
        session.trust_env = False
        super().__init__(session)
        self._timeout_s = timeout_s

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> Any:
        return super().__call__(  # type: ignore[no-untyped-call]
            url, method=method, body=body, headers=headers, timeout=self._timeout_s, **kwargs
        )

    def close(self) -> None:
        self.session.close()


def _utcnow() -> datetime:
    # google-auth keeps `expiry` as a naive UTC datetime.
    return datetime.now(UTC).replace(tzinfo=None)


class AccessTokens:
    """A cached, refreshed-before-expiry access token for one service account."""

    def __init__(
        self,
        credentials: service_account.Credentials,
        *,
        refresh_margin_s: float = REFRESH_MARGIN_S,
        timeout_s: float = TOKEN_REQUEST_TIMEOUT_S,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._credentials = credentials
        self._margin_s = refresh_margin_s
        self._clock = clock
        self._transport = _Transport(timeout_s)
        self._lock = asyncio.Lock()
        self._issued: list[str] = []  # the current token and the one before, for redaction
        self.refreshes = 0

    @property
    def expiry(self) -> datetime | None:
        expiry: datetime | None = self._credentials.expiry
        return expiry

    def _fresh(self) -> str | None:
        token: str | None = self._credentials.token
        if not token:
            return None
        expiry = self.expiry
        if expiry is not None and (expiry - self._clock()).total_seconds() <= self._margin_s:
            return None
        return token

    async def token(self) -> str:
        """The current token, refreshed first when it is missing or about to expire.

        Raises AttemptFailed (502, fail over) when no token can be had.
        """
        if (token := self._fresh()) is not None:
            return token
        async with self._lock:
            if (token := self._fresh()) is not None:
                return token  # another request refreshed it meanwhile
            try:
                await asyncio.to_thread(self._credentials.refresh, self._transport)
            except (google.auth.exceptions.GoogleAuthError, requests.RequestException) as err:
                # The token endpoint's answer names no secret, but keep logs terse.
                log.warning(
                    "cannot obtain an access token for %s: %s",
                    self._credentials.service_account_email,
                    type(err).__name__,
                )
                raise AttemptFailed(
                    AttemptFailure(
                        502,
                        TOKEN_UNAVAILABLE,
                        "the gateway could not obtain an access token for the upstream",
                        True,
                    )
                ) from None
            self.refreshes += 1
            token = self._credentials.token
            if not token:
                raise AttemptFailed(
                    AttemptFailure(
                        502, TOKEN_UNAVAILABLE, "the token endpoint issued no access token", True
                    )
                )
            self._issued = [*self._issued[-1:], token]
            return str(token)

    def redact(self, text: str) -> str:
        return redact_values(text, self._issued)

    def close(self) -> None:
        self._transport.close()

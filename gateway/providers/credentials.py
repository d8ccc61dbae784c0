"""Provider credentials: read once at start-up, never shown.

:class:`CredentialStore` reads an endpoint's credentials from the environment
variables or files its registry `auth` names; a missing one fails start-up with
the variable's name (:class:`gateway.errors.ProviderConfigError`). Values live in
:class:`Secret`, whose repr never shows them, and adapters pass any upstream
text through :meth:`CredentialStore.redact` before it can reach a client or a log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.errors import ProviderConfigError
from translator.registry import Endpoint


class Secret:
    """A credential value that does not show itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself: only for building the upstream request."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Pickling would copy the secret into wherever the pickle goes.
        raise TypeError("a Secret cannot be pickled")


class CredentialStore:
    """Reads an endpoint's credentials from the env vars / files its `auth` names.

    `auth` holds `<name>_env` (an environment variable) or `<name>_file` (a
    file) for each credential, e.g. `bearer_token_env: PRIVATE_GPU_TOKEN`.
    Everything is read when asked for, at adapter construction (startup), so
    that a missing credential fails fast and names the variable.
    """

    def __init__(self, endpoint: Endpoint, environ: Mapping[str, str] | None = None) -> None:
        self._endpoint = endpoint
        self._environ = os.environ if environ is None else environ
        self._loaded: list[str] = []

    def has(self, name: str) -> bool:
        """Whether `auth` names a source for credential `name`."""
        auth = self._endpoint.auth
        return f"{name}_env" in auth or f"{name}_file" in auth

    def load(self, name: str) -> Secret | None:
        """The credential `name`, or None when `auth` names no source for it.

        Raises ProviderConfigError when the named variable is unset or empty, or
        the named file is missing, unreadable or empty.
        """
        auth = self._endpoint.auth
        where = f"endpoint '{self._endpoint.name}'"
        env_key, file_key = f"{name}_env", f"{name}_file"
        if env_key in auth:
            variable = auth[env_key]
            value = self._environ.get(variable, "").strip()
            if not value:
                raise ProviderConfigError(
                    f"{where}: environment variable {variable} (auth.{env_key}) is not set"
                )
        elif file_key in auth:
            path = auth[file_key]
            try:
                # Read once at startup, before the event loop serves requests.
                with open(path, encoding="utf-8") as fh:
                    value = fh.read().strip()
            except OSError as err:
                raise ProviderConfigError(
                    f"{where}: cannot read credential file {path} (auth.{file_key}): "
                    f"{err.strerror or type(err).__name__}"
                ) from None
            if not value:
                raise ProviderConfigError(
                    f"{where}: credential file {path} (auth.{file_key}) is empty"
                )
        else:
            return None
        self._loaded.append(value)
        return Secret(value)

    def require(self, *names: str) -> tuple[str, Secret]:
        """The first of `names` that `auth` configures; fails naming the accepted keys."""
        for name in names:
            secret = self.load(name)
            if secret is not None:
                return name, secret
        accepted = ", ".join(f"auth.{n}_env or auth.{n}_file" for n in names)
        raise ProviderConfigError(
            f"endpoint '{self._endpoint.name}' (type {self._endpoint.type}) needs a "
            f"credential: set {accepted}"
        )

    def redact(self, text: str) -> str:
        """`text` with every loaded secret value replaced by `***`."""
        return redact_values(text, self._loaded)


def redact_values(text: str, values: Iterable[str]) -> str:
    """`text` with each of `values` (secrets) replaced by `***`.

    An upstream may echo a key inside JSON, escaped (`\\/` for `/`, `\\uXXXX`
    for any character): those spellings are replaced too.
    """
    for value in values:
        if not value:
            continue
        for spelling in _spellings(value):
            if spelling in text:
                text = text.replace(spelling, "***")
    return text


def _spellings(value: str) -> tuple[str, ...]:
    """`value` as it can appear in text or in a JSON string."""
    escaped = json.dumps(value)[1:-1]
    return tuple(
        dict.fromkeys(
            (
                value,
                escaped,
                escaped.replace("/", "\\/"),
                "".join(f"\\u{ord(c):04x}" for c in value),
                "".join(f"\\u{ord(c):04X}" for c in value),
            )
        )
    )

"""The limits file: per-tenant rate limits and budgets, typed, frozen and validated.

A limits file (the `limits` setting) says how much each tenant may send and
spend; the limiter (:mod:`gateway.limits.backend`) enforces it. Example::

    version: v1
    defaults:                     # tenants without an entry, and what an entry leaves out
      requests_per_minute: 600
      tokens_per_minute: 200000
      usd_per_day: 50
      usd_per_month: 1000
    reservation:
      default_output_tokens: 1024 # reserved when a request names no max_tokens
      max_output_tokens: 8192     # the most output reserved for one request
      max_usd: 2.0                # optional: the most cost reserved for one request
      ttl_s: 900                  # a reservation never settled (replica killed) expires
    tenants:
      enterprise-acme:
        usd_per_day: 200
        usd_per_month: null       # null: no monthly cap for this tenant
        users:
          "*": {requests_per_minute: 60}     # each user of the tenant
          u-17: {requests_per_minute: 600}
        endpoints:
          anthropic: {usd_per_day: 100}      # this tenant's spend on one endpoint
    keys:
      0123456789abcdef: {requests_per_minute: 10}   # one API key (its id)

Every problem is reported at once, each as `file:line:col: key: message`, and
the gateway does not start (a reload keeps the previous limits in force).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final

from gateway.errors import ConfigError
from translator.errors import Position
from translator.source import LMap, LNode, LScalar, load, type_name

SUPPORTED_VERSIONS: Final = ("v1",)
LIMIT_FIELDS: Final = ("requests_per_minute", "tokens_per_minute", "usd_per_day", "usd_per_month")
SCOPE_KEYS: Final = (*LIMIT_FIELDS, "users", "endpoints")
RESERVATION_FIELDS: Final = ("default_output_tokens", "max_output_tokens", "max_usd", "ttl_s")
TOP_KEYS: Final = ("version", "defaults", "reservation", "tenants", "keys")
EVERY_USER: Final = "*"
# Spend is counted in nano-dollars (integers in Redis and Lua, whose numbers
# are doubles: exact below 2**53, i.e. about 9 million dollars per window).
MAX_USD: Final = 1_000_000.0
MAX_COUNT: Final = 10**12


class LimitsConfigError(ConfigError):
    """The limits file is unreadable or invalid; `problems` lists every error."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        super().__init__(f"limits file {path}: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one scope; None: no such limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in LIMIT_FIELDS)


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's own limits, its users' (`"*"`: each user) and its per-endpoint ones."""

    limits: Limits = Limits()
    users: Mapping[str, Limits] = field(default_factory=lambda: MappingProxyType({}))
    endpoints: Mapping[str, Limits] = field(default_factory=lambda: MappingProxyType({}))

    def user(self, user: str | None) -> Limits | None:
        if user is None:
            return None
        return self.users.get(user) or self.users.get(EVERY_USER)


@dataclass(frozen=True, slots=True)
class ReservationPolicy:
    """How much a request reserves before it is forwarded (see gateway.limits.estimate)."""

    default_output_tokens: int = 1024
    max_output_tokens: int = 8192
    max_usd: float | None = None
    ttl_s: float = 900.0


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    path: str
    defaults: TenantLimits = TenantLimits()
    tenants: Mapping[str, TenantLimits] = field(default_factory=lambda: MappingProxyType({}))
    keys: Mapping[str, Limits] = field(default_factory=lambda: MappingProxyType({}))
    reservation: ReservationPolicy = ReservationPolicy()

    def tenant(self, tenant: str) -> TenantLimits:
        """The tenant's entry with the defaults filled in, or the defaults."""
        return self.tenants.get(tenant, self.defaults)


# -- loading -------------------------------------------------------------------


def load_limits(path: str) -> LimitsConfig:
    """Read and validate the limits file at `path`; LimitsConfigError names every problem."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        raise LimitsConfigError(path, [f"cannot read it: {err.strerror or err}"]) from err
    return parse_limits(text, path)


def parse_limits(text: str, path: str) -> LimitsConfig:
    doc = load(text, path)
    checker = _Checker(path)
    for diagnostic in doc.diagnostics:
        checker.err(diagnostic.pos, "", diagnostic.message)
    config = None
    if doc.root is None:
        if not doc.diagnostics:
            checker.err(Position(path, 1, 1), "", "the file is empty: it needs 'version: v1'")
    else:
        config = checker.root(doc.root)
    if checker.problems or config is None:
        # In the order of the file, as an editor would walk them.
        ordered = sorted(checker.positioned, key=lambda item: (item[0].line, item[0].col))
        raise LimitsConfigError(path, [text for _, text in ordered])
    return config


class _Checker:
    def __init__(self, path: str) -> None:
        self.path = path
        self.positioned: list[tuple[Position, str]] = []

    @property
    def problems(self) -> list[tuple[Position, str]]:
        return self.positioned

    def err(self, pos: Position, where: str, message: str) -> None:
        text = f"{pos}: {where}: {message}" if where else f"{pos}: {message}"
        self.positioned.append((pos, text))

    def mapping(self, node: LNode, where: str) -> LMap | None:
        if isinstance(node, LMap):
            return node
        if isinstance(node, LScalar) and node.value is None:
            return LMap({}, {}, node.pos)  # `key:` with nothing after it: an empty mapping
        self.err(node.pos, where, f"expected a mapping, got {type_name(node)}")
        return None

    def keys(self, node: LMap, where: str, allowed: tuple[str, ...]) -> None:
        for key, pos in node.keys.items():
            if key not in allowed:
                self.err(pos, where, f"unknown key '{key}' (known: {', '.join(allowed)})")

    def root(self, node: LNode) -> LimitsConfig | None:
        root = self.mapping(node, "the limits file")
        if root is None:
            return None
        self.keys(root, "", TOP_KEYS)
        version = root.get("version")
        if version is None:
            self.err(root.pos, "version", "required: write 'version: v1'")
        elif not (isinstance(version, LScalar) and version.value in SUPPORTED_VERSIONS):
            self.err(version.pos, "version", f"expected one of {', '.join(SUPPORTED_VERSIONS)}")
        defaults = TenantLimits()
        if (node_defaults := root.get("defaults")) is not None:
            defaults = self.tenant(node_defaults, "defaults", None) or defaults
        reservation = ReservationPolicy()
        if (node_res := root.get("reservation")) is not None:
            reservation = self.reservation(node_res) or reservation
        tenants: dict[str, TenantLimits] = {}
        if (node_tenants := root.get("tenants")) is not None and (
            table := self.mapping(node_tenants, "tenants")
        ):
            for name, entry in table.entries.items():
                if self.name(name, table.keys[name], "tenants"):
                    parsed = self.tenant(entry, f"tenants.{name}", defaults)
                    if parsed is not None:
                        tenants[name] = parsed
        keys: dict[str, Limits] = {}
        if (node_keys := root.get("keys")) is not None and (
            table := self.mapping(node_keys, "keys")
        ):
            for key_id, entry in table.entries.items():
                if self.name(key_id, table.keys[key_id], "keys"):
                    limits = self.limits(entry, f"keys.{key_id}", LIMIT_FIELDS)
                    if limits is not None:
                        keys[key_id] = limits
        return LimitsConfig(
            path=self.path,
            defaults=defaults,
            tenants=MappingProxyType(tenants),
            keys=MappingProxyType(keys),
            reservation=reservation,
        )

    def name(self, name: str, pos: Position, where: str) -> bool:
        if not name or name != name.strip() or any(not ch.isprintable() for ch in name):
            self.err(pos, where, f"bad name {name!r}: no control characters or outer spaces")
            return False
        return True

    def tenant(self, node: LNode, where: str, defaults: TenantLimits | None) -> TenantLimits | None:
        table = self.mapping(node, where)
        if table is None:
            return None
        self.keys(table, where, SCOPE_KEYS)
        limits = self.limits(
            table, where, SCOPE_KEYS, inherit=defaults.limits if defaults else None
        )
        users = self.scopes(table, "users", where)
        endpoints = self.scopes(table, "endpoints", where)
        if limits is None or users is None or endpoints is None:
            return None
        return TenantLimits(
            limits,
            MappingProxyType(users) if "users" in table.entries or not defaults else defaults.users,
            MappingProxyType(endpoints)
            if "endpoints" in table.entries or not defaults
            else defaults.endpoints,
        )

    def scopes(self, table: LMap, key: str, where: str) -> dict[str, Limits] | None:
        node = table.get(key)
        if node is None:
            return {}
        sub = self.mapping(node, f"{where}.{key}")
        if sub is None:
            return None
        out: dict[str, Limits] = {}
        for name, entry in sub.entries.items():
            if self.name(name, sub.keys[name], f"{where}.{key}"):
                limits = self.limits(entry, f"{where}.{key}.{name}", LIMIT_FIELDS)
                if limits is not None:
                    out[name] = limits
        return out

    def limits(
        self,
        node: LNode,
        where: str,
        allowed: tuple[str, ...],
        *,
        inherit: Limits | None = None,
    ) -> Limits | None:
        table = self.mapping(node, where)
        if table is None:
            return None
        if allowed == LIMIT_FIELDS:
            self.keys(table, where, LIMIT_FIELDS)
        before = len(self.problems)
        values: dict[str, Any] = {}
        for key in LIMIT_FIELDS:
            if key not in table.entries:
                continue
            value = table.entries[key]
            sub = f"{where}.{key}"
            if isinstance(value, LScalar) and value.value is None:
                values[key] = None  # explicitly unlimited
            elif key.startswith("usd_"):
                values[key] = self.number(value, sub, maximum=MAX_USD)
            else:
                values[key] = self.integer(value, sub, minimum=0, maximum=MAX_COUNT)
        if len(self.problems) != before:
            return None
        return replace(inherit or Limits(), **values)

    def reservation(self, node: LNode) -> ReservationPolicy | None:
        where = "reservation"
        table = self.mapping(node, where)
        if table is None:
            return None
        self.keys(table, where, RESERVATION_FIELDS)
        before = len(self.problems)
        values: dict[str, Any] = {}
        for key, value in table.entries.items():
            sub = f"{where}.{key}"
            if key in ("default_output_tokens", "max_output_tokens"):
                values[key] = self.integer(value, sub, minimum=1, maximum=10**7)
            elif key == "max_usd":
                null = isinstance(value, LScalar) and value.value is None
                values[key] = None if null else self.number(value, sub, maximum=MAX_USD)
            elif key == "ttl_s":
                values[key] = self.number(value, sub, maximum=7 * 86400.0, positive=True)
        if len(self.problems) != before:
            return None
        policy = ReservationPolicy(**values)
        if policy.default_output_tokens > policy.max_output_tokens:
            pos = table.keys.get("default_output_tokens", table.pos)
            self.err(pos, f"{where}.default_output_tokens", "must not exceed max_output_tokens")
            return None
        return policy

    def integer(self, node: LNode, where: str, *, minimum: int, maximum: int) -> int:
        value = node.value if isinstance(node, LScalar) else None
        if isinstance(value, bool) or not isinstance(value, int):
            self.err(node.pos, where, f"expected an integer, got {type_name(node)}")
            return minimum
        if not minimum <= value <= maximum:
            self.err(node.pos, where, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def number(self, node: LNode, where: str, *, maximum: float, positive: bool = False) -> float:
        value = node.value if isinstance(node, LScalar) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.err(node.pos, where, f"expected a number, got {type_name(node)}")
            return 0.0
        number = float(value)
        if not math.isfinite(number) or number < 0 or (positive and number == 0):
            wanted = "a positive" if positive else "a non-negative"
            self.err(node.pos, where, f"must be {wanted} finite number, got {value}")
        elif number > maximum:
            self.err(node.pos, where, f"must be at most {maximum:g}, got {value}")
        return number

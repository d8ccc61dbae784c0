"""The endpoint registry: where each named endpoint lives and what it costs.

Shared by the translator (route targets must exist; registry facts reach OPA as
data for the guards) and the gateway (forwarding, pricing). It imports nothing
from either side and no jinja2, so both can use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from translator.errors import BAD_VALUE, MISSING_KEY, Diagnostic, Position, did_you_mean
from translator.operations import OPERATIONS, default_operations
from translator.source import Document, LMap, LNode
from translator.validate import Collector

ENDPOINT_TYPES = (
    "openai-compatible",
    "openai",
    "anthropic",
    "bedrock",
    "vertex",
    "azure-openai",
)

COMMON_FIELDS = (
    "type",
    "base_url",
    "model",
    "in_vpc",
    "auth",
    "pricing",
    "timeouts",
    "description",
    "operations",
)

# Fields each type adds, and which of all its fields it requires.
TYPE_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        # metrics_url: the server's own Prometheus metrics, scraped for endpoint
        # health (vLLM and TGI serve /metrics on their API port).
        "openai-compatible": ("flavor", "metrics_url"),
        "openai": ("organization", "project"),
        "anthropic": ("anthropic_version", "max_tokens_default"),
        "bedrock": (
            "region",
            "vpc_endpoint_url",
            "assume_role_arn",
            "sts_endpoint_url",
            "messages_api",
        ),
        "vertex": ("project", "location", "publisher", "anthropic_version", "max_tokens_default"),
        "azure-openai": ("deployment", "api_version", "responses_api_version"),
    }
)
REQUIRED_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "openai-compatible": ("base_url",),
        "openai": (),
        "anthropic": (),
        "bedrock": ("region",),
        "vertex": ("project", "location"),
        "azure-openai": ("base_url", "deployment", "api_version"),
    }
)
ENUM_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "flavor": ("vllm", "tgi", "tensorrt-llm", "openai"),
        "publisher": ("google", "anthropic"),
        # How a bedrock endpoint serves Anthropic Messages: InvokeModel with the
        # body passed through, or translated to Converse (default: by model id).
        "messages_api": ("invoke", "converse"),
    }
)
INTEGER_FIELDS = ("max_tokens_default",)
URL_FIELDS = ("metrics_url",)

# Credentials are never written in the registry itself: only the names of the
# environment variables or files that hold them.
AUTH_FIELDS = (
    "bearer_token_env",
    "bearer_token_file",
    "api_key_env",
    "api_key_file",
    "service_account_file",
    "service_account_env",
    "entra_tenant_id",
    "entra_client_id",
    "entra_client_secret_env",
    "entra_client_secret_file",
    "entra_authority",
)
PRICING_FIELDS = ("input_per_1k", "output_per_1k")
TIMEOUT_FIELDS = ("connect_ms", "first_token_ms", "total_ms")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Pricing:
    input_per_1k: float = 0.0
    output_per_1k: float = 0.0

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        """The one cost formula (USD at these per-1k prices), rounded to a nano-dollar."""
        return round(
            (input_tokens * self.input_per_1k + output_tokens * self.output_per_1k) / 1000.0, 9
        )


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_ms: int = 2000
    first_token_ms: int = 30000
    total_ms: int = 300000


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    type: str
    pos: Position
    base_url: str | None = None
    model: str | None = None
    in_vpc: bool = False
    auth: Mapping[str, str] = field(default_factory=dict)
    pricing: Pricing = Pricing()
    timeouts: Timeouts = Timeouts()
    description: str | None = None
    # Type-specific fields (region, deployment, ...), as validated strings/ints.
    options: Mapping[str, str | int] = field(default_factory=dict)
    # What it serves: `operations:` in the registry, else the type's and model's default.
    operations: frozenset[str] = frozenset({"chat", "messages", "responses"})

    def opa_facts(self) -> dict[str, Any]:
        """What Rego guards may know of this endpoint: no URLs, no credential names."""
        facts: dict[str, Any] = {
            "type": self.type,
            "in_vpc": self.in_vpc,
            "operations": sorted(self.operations),
            "pricing": {
                "input_per_1k": self.pricing.input_per_1k,
                "output_per_1k": self.pricing.output_per_1k,
            },
        }
        if self.model is not None:
            facts["model"] = self.model
        return facts


@dataclass(frozen=True, slots=True)
class Registry:
    path: str
    endpoints: Mapping[str, Endpoint]
    # Names the registry declares but rejected (their errors are reported there).
    rejected: frozenset[str] = frozenset()
    # False when the file could not be read or has no endpoints table at all: the
    # policy check then does not report every route target as unknown.
    readable: bool = True

    def opa_data(self) -> dict[str, Any]:
        """The document loaded into OPA at `data.kamiwaza.endpoints`."""
        return {name: self.endpoints[name].opa_facts() for name in sorted(self.endpoints)}


def check_registry(doc: Document) -> tuple[Registry, list[Diagnostic]]:
    """Validate a loaded registry document; returns what was valid and every problem."""
    out = Collector()
    out.diagnostics.extend(doc.diagnostics)
    endpoints: dict[str, Endpoint] = {}
    rejected: set[str] = set()
    if doc.root is None:
        if not doc.diagnostics:
            out.err(
                MISSING_KEY,
                "the endpoint registry is empty: it needs an 'endpoints' mapping",
                Position(doc.path, 1, 1),
            )
        return Registry(doc.path, endpoints, readable=False), out.diagnostics
    root = out.expect_map(doc.root, "the endpoint registry", doc.root.pos)
    if root is None:
        return Registry(doc.path, endpoints, readable=False), out.diagnostics
    out.check_keys(root, ("endpoints",), "the endpoint registry", required=("endpoints",))
    table = root.get("endpoints")
    if table is None:
        return Registry(doc.path, endpoints, readable=False), out.diagnostics
    table_map = out.expect_map(table, "'endpoints'", root.pos)
    if table_map is None:
        return Registry(doc.path, endpoints, readable=False), out.diagnostics
    for name, node in table_map.entries.items():
        key_pos = table_map.keys[name]
        if not _NAME_RE.match(name):
            out.err(
                BAD_VALUE,
                f"endpoint name '{name}' may only use letters, digits, '.', '_' and '-'",
                key_pos,
            )
            rejected.add(name)
            continue
        endpoint = _check_endpoint(out, name, node, key_pos)
        if endpoint is None:
            rejected.add(name)
        else:
            endpoints[name] = endpoint
    return Registry(doc.path, MappingProxyType(endpoints), frozenset(rejected)), out.diagnostics


def _check_endpoint(out: Collector, name: str, node: LNode, key_pos: Position) -> Endpoint | None:
    spec = out.expect_map(node, f"endpoint '{name}'", key_pos)
    if spec is None:
        return None
    where = f"endpoint '{name}'"
    type_node = spec.get("type")
    if type_node is None:
        out.err(MISSING_KEY, f"{where} is missing required key 'type'", spec.pos)
        return None
    ep_type = out.expect_str(type_node, f"{where}: 'type'")
    if ep_type is None:
        return None
    if ep_type not in ENDPOINT_TYPES:
        out.err(
            BAD_VALUE,
            f"{where}: unknown endpoint type '{ep_type}'",
            type_node.pos,
            did_you_mean(ep_type, ENDPOINT_TYPES) or f"types: {', '.join(ENDPOINT_TYPES)}",
        )
        return None
    before = len(out.diagnostics)
    out.check_keys(
        spec,
        COMMON_FIELDS + TYPE_FIELDS[ep_type],
        where,
        required=REQUIRED_FIELDS[ep_type],
        secret_values=True,
    )
    strings: dict[str, str] = {}
    for key in ("base_url", "model", "description"):
        value_node = spec.get(key)
        if value_node is None:
            continue
        value = out.expect_str(value_node, f"{where}: '{key}'")
        if value is None:
            continue
        if key == "base_url" and not re.match(r"^https?://[^/\s]+", value):
            out.err(
                BAD_VALUE,
                f"{where}: 'base_url' must be an http:// or https:// URL, got '{value}'",
                value_node.pos,
            )
            continue
        strings[key] = value
    base_url = strings.get("base_url")
    options: dict[str, str | int] = {}
    for key in TYPE_FIELDS[ep_type]:
        value_node = spec.get(key)
        if value_node is None:
            continue
        if key in INTEGER_FIELDS:
            number = out.expect_number(value_node, f"{where}: '{key}'", minimum=1, integer=True)
            if number is not None:
                options[key] = int(number)
            continue
        text = out.expect_str(value_node, f"{where}: '{key}'")
        if text is None:
            continue
        if key in URL_FIELDS and not re.match(r"^https?://[^/\s]+", text):
            out.err(
                BAD_VALUE,
                f"{where}: '{key}' must be an http:// or https:// URL, got '{text}'",
                value_node.pos,
            )
            continue
        if key in ENUM_FIELDS and text not in ENUM_FIELDS[key]:
            out.err(
                BAD_VALUE,
                f"{where}: '{key}' must be one of {', '.join(ENUM_FIELDS[key])}, got '{text}'",
                value_node.pos,
            )
            continue
        options[key] = text
    in_vpc = False
    if (vpc_node := spec.get("in_vpc")) is not None:
        in_vpc = bool(out.expect_bool(vpc_node, f"{where}: 'in_vpc'"))
    auth = _check_auth(out, spec, where)
    pricing = _check_pricing(out, spec, where)
    timeouts = _check_timeouts(out, spec, where)
    model = strings.get("model") or _str_option(options, "deployment")
    operations = _check_operations(out, spec, where) or default_operations(ep_type, model)
    if len(out.diagnostics) != before:
        return None
    return Endpoint(
        name=name,
        type=ep_type,
        pos=key_pos,
        base_url=base_url,
        model=strings.get("model"),
        in_vpc=in_vpc,
        auth=MappingProxyType(auth),
        pricing=pricing,
        timeouts=timeouts,
        description=strings.get("description"),
        options=MappingProxyType(options),
        operations=operations,
    )


def _str_option(options: Mapping[str, str | int], key: str) -> str | None:
    value = options.get(key)
    return value if isinstance(value, str) else None


def _check_operations(out: Collector, spec: LMap, where: str) -> frozenset[str] | None:
    node = spec.get("operations")
    if node is None:
        return None
    seq = out.expect_seq(node, f"{where}: 'operations'")
    if seq is None:
        return None
    names: set[str] = set()
    for item in seq.items:
        name = out.expect_str(item, f"{where}: 'operations' item")
        if name is None:
            continue
        if name not in OPERATIONS:
            out.err(
                BAD_VALUE,
                f"{where}: unknown operation '{name}'",
                item.pos,
                did_you_mean(name, OPERATIONS) or f"operations: {', '.join(OPERATIONS)}",
            )
            continue
        names.add(name)
    if not seq.items:
        out.err(BAD_VALUE, f"{where}: 'operations' must name at least one operation", node.pos)
    return frozenset(names) or None


def _check_auth(out: Collector, spec: LMap, where: str) -> dict[str, str]:
    auth = out.expect_table(spec, "auth", f"{where}: 'auth'", AUTH_FIELDS, secret_values=True)
    if auth is None:
        return {}
    result: dict[str, str] = {}
    for key, value_node in auth.entries.items():
        if key not in AUTH_FIELDS:
            continue
        value = out.expect_str(value_node, f"{where}: 'auth.{key}'")
        if value is None:
            continue
        if key.endswith("_env") and not _ENV_RE.match(value):
            out.err(
                BAD_VALUE,
                # The value is not echoed: it may be the credential itself.
                f"{where}: 'auth.{key}' must name an environment variable "
                "(letters, digits and '_'); the value given is not one",
                value_node.pos,
                "write the credential into that variable, never into this file",
                redact_col=value_node.pos.col,
            )
            continue
        result[key] = value
    return result


def _check_pricing(out: Collector, spec: LMap, where: str) -> Pricing:
    values = _check_numbers(out, spec, where, "pricing", PRICING_FIELDS, minimum=0)
    return Pricing(**{key: float(number) for key, number in values.items()})


def _check_timeouts(out: Collector, spec: LMap, where: str) -> Timeouts:
    values = _check_numbers(out, spec, where, "timeouts", TIMEOUT_FIELDS, minimum=1, integer=True)
    return Timeouts(**{key: int(number) for key, number in values.items()})


def _check_numbers(
    out: Collector,
    spec: LMap,
    where: str,
    table_key: str,
    fields: tuple[str, ...],
    *,
    minimum: float,
    integer: bool = False,
) -> dict[str, float]:
    """The valid numbers of the table at `table_key`, by field (absent ones left out)."""
    table = out.expect_table(spec, table_key, f"{where}: '{table_key}'", fields)
    if table is None:
        return {}
    values: dict[str, float] = {}
    for key in fields:
        if (value_node := table.get(key)) is not None:
            number = out.expect_number(
                value_node, f"{where}: '{table_key}.{key}'", minimum=minimum, integer=integer
            )
            if number is not None:
                values[key] = number
    return values


__all__ = [
    "ENDPOINT_TYPES",
    "Endpoint",
    "Pricing",
    "Registry",
    "Timeouts",
    "check_registry",
]

"""Check stage: turn a located YAML document into a :class:`Policy`, collecting
every error and warning rather than stopping at the first.

Checks: top-level shape and version, rule keys and value types, comparison
strings, empty matches, placement and count of `default`, duplicate rule names,
route targets against the endpoint registry, the `tests:` section, and rules
that can never match because an earlier rule shadows them (a warning).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from translator.errors import (
    BAD_COMPARISON,
    BAD_VALUE,
    DEFAULT_NOT_LAST,
    DEFAULT_TWICE,
    DUPLICATE_RULE_NAME,
    EMPTY_MATCH,
    MISSING_KEY,
    SHADOWED_RULE,
    UNKNOWN_ENDPOINT,
    UNKNOWN_KEY,
    UNSERVED_OPERATION,
    UNSUPPORTED_VERSION,
    Diagnostic,
    Position,
    did_you_mean,
    warning,
)
from translator.health import check_endpoint_health, check_health
from translator.model import (
    HEALTH_PREFIX,
    LABEL_PREFIX,
    MATCH_FIELDS,
    Condition,
    DefaultRule,
    FieldKind,
    NumberCondition,
    Policy,
    PolicyTest,
    Rule,
    StringCondition,
)
from translator.operations import OPERATIONS
from translator.registry import Registry
from translator.shadow import glob_matches, shadowed_rules
from translator.source import Document, LMap, LNode, LScalar, LSeq, plain
from translator.validate import Collector

SUPPORTED_VERSIONS = ("v1",)
TOP_KEYS = ("version", "description", "rules", "health", "tests")
RULE_KEYS = ("name", "description", "match", "route_to", "fallback")
DEFAULT_KEYS = ("route_to", "fallback")
TEST_KEYS = ("name", "input", "expect")
EXPECT_KEYS = ("route_to", "rule", "fallback", "deny")

# Fields of the input document (docs/design.md, "Decision") and their types,
# so that a test example cannot silently use a shape the gateway never sends.
_STRING = ((str,), "a string")
_NUMBER_T = ((int, float), "a number")
_MAPPING = ((dict,), "a mapping")
INPUT_FIELDS: Mapping[str, tuple[tuple[type, ...], str]] = {
    "tenant": _STRING,
    "user": _MAPPING,
    "data_class": _STRING,
    "latency_budget_ms": _NUMBER_T,
    "cost_cap_per_1k": _NUMBER_T,
    "model": _STRING,
    "operation": _STRING,
    "labels": _MAPPING,
    "request": _MAPPING,
    "budget": _MAPPING,
    "health": _MAPPING,  # the gateway's observed endpoint health (docs/health.md)
}
USER_FIELDS = ("id", "roles")
# The limiter's `budget` object (gateway/limits/opa.py).
BUDGET_FIELDS: Mapping[str, tuple[tuple[type, ...], str]] = {
    "remaining_share": _NUMBER_T,
    "remaining_usd": _NUMBER_T,
    "limit": _STRING,
}

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_COMPARISON_RE = re.compile(rf"^\s*(<=|>=|==|!=|<|>)\s*({_NUMBER})\s*$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def check_policy(doc: Document, registry: Registry) -> tuple[Policy, list[Diagnostic]]:
    """Validate `doc` against the language and `registry`.

    Returns the policy built from whatever was valid, and all diagnostics. The
    policy is only meaningful when no diagnostic is an error.
    """
    checker = _PolicyChecker(doc, registry)
    policy = checker.run()
    return policy, checker.out.diagnostics


class _PolicyChecker:
    def __init__(self, doc: Document, registry: Registry) -> None:
        self.doc = doc
        self.registry = registry
        self.out = Collector()
        self.out.diagnostics.extend(doc.diagnostics)

    def run(self) -> Policy:
        rules: list[Rule] = []
        default: DefaultRule | None = None
        tests: list[PolicyTest] = []
        empty = Policy(self.doc.path, (), None, ())
        root_node = self.doc.root
        if root_node is None:
            if not self.doc.diagnostics:
                self.out.err(
                    MISSING_KEY,
                    "the policy is empty: it needs 'version: v1' and a 'rules' list",
                    Position(self.doc.path, 1, 1),
                )
            return empty
        root = self.out.expect_map(root_node, "the policy", root_node.pos)
        if root is None:
            return empty
        self.out.check_keys(root, TOP_KEYS, "the policy", required=("version", "rules"))
        self._check_version(root)
        if (desc := root.get("description")) is not None:
            self.out.expect_str(desc, "the policy 'description'", nonempty=False)
        rules_node = root.get("rules")
        declared: set[str] = set()
        if rules_node is not None and (seq := self.out.expect_seq(rules_node, "'rules'")):
            rules, default, declared = self._check_rules(seq)
        health = check_health(self.out, root, self._check_number_condition)
        tests_node = root.get("tests")
        if tests_node is not None and (seq := self.out.expect_seq(tests_node, "'tests'")):
            tests = self._check_tests(seq, declared)
        return Policy(self.doc.path, tuple(rules), default, tuple(tests), health)

    def _check_version(self, root: LMap) -> None:
        node = root.get("version")
        if node is None:
            return
        value = node.value if isinstance(node, LScalar) else None
        if value not in SUPPORTED_VERSIONS:
            shown = value if isinstance(value, str) else plain(node)
            self.out.err(
                UNSUPPORTED_VERSION,
                f"unsupported policy version {shown!r}; this translator supports "
                + ", ".join(SUPPORTED_VERSIONS),
                node.pos,
                "write 'version: v1'",
            )

    # -- rules -------------------------------------------------------------

    def _check_rules(self, seq: LSeq) -> tuple[list[Rule], DefaultRule | None, set[str]]:
        """The valid rules, the default, and every rule name declared (valid or not,
        so that a rule with an error is neither exempt from the duplicate check nor
        reported as missing by a test that names it)."""
        rules: list[Rule] = []
        default: DefaultRule | None = None
        names: dict[str, Position] = {}
        declared: set[str] = set()
        last = len(seq.items) - 1
        for index, item in enumerate(seq.items):
            spec = self.out.expect_map(item, f"rule {index}", item.pos)
            if spec is None:
                continue
            if "default" in spec.entries:
                declared.add("default")
                default = self._check_default(spec, index, last, default) or default
                continue
            rule = self._check_rule(spec, index)
            name = _declared_name(spec, index)
            if name is not None:
                if name in names:
                    self.out.err(
                        DUPLICATE_RULE_NAME,
                        f"duplicate rule name '{name}' (first used at line {names[name].line})",
                        _key_pos(spec, "name"),
                        "rule names identify rules in audit records; give each a unique name",
                    )
                    continue
                names[name] = spec.pos
                declared.add(name)
            if rule is not None:
                rules.append(rule)
                self._check_served(rule)
        self._check_shadowing(rules)
        return rules, default, declared

    def _check_served(self, rule: Rule) -> None:
        """Warn when no endpoint the rule routes to serves an operation it matches."""
        matched: frozenset[str] = frozenset(OPERATIONS)
        for condition in rule.conditions:
            if isinstance(condition, StringCondition) and condition.field == "operation":
                matched = frozenset(
                    op
                    for op in OPERATIONS
                    if op in condition.literals or any(glob_matches(g, op) for g in condition.globs)
                )
        served: set[str] = set()
        for name in (rule.route_to, *rule.fallback):
            endpoint = self.registry.endpoints.get(name)
            if endpoint is None:
                return  # an unknown endpoint is an error reported elsewhere
            served |= endpoint.operations
        if matched and not matched & served:
            self.out.diagnostics.append(
                warning(
                    UNSERVED_OPERATION,
                    f"rule '{rule.name}' matches {_ops(matched)} requests but routes only to "
                    f"endpoints that serve {', '.join(sorted(served))}: the operation guard "
                    "refuses every request it matches",
                    rule.pos,
                    "route it to an endpoint whose 'operations' include what it matches",
                )
            )

    def _check_default(
        self, spec: LMap, index: int, last: int, previous: DefaultRule | None
    ) -> DefaultRule | None:
        pos = spec.keys["default"]
        self.out.check_keys(spec, ("default",), "a default rule")
        if previous is not None:
            self.out.err(
                DEFAULT_TWICE,
                f"'default' is given twice (first at line {previous.pos.line})",
                pos,
                "keep one default, as the last rule",
            )
            return None
        if index != last:
            self.out.err(
                DEFAULT_NOT_LAST,
                "'default' must be the last rule: the rules after it could never match",
                pos,
                "move the default to the end of 'rules'",
            )
        body = self.out.expect_map(spec.get("default"), "'default'", pos)
        if body is None:
            return None
        self.out.check_keys(body, DEFAULT_KEYS, "'default'", required=("route_to",))
        route_to = self._check_route_to(body)
        fallback = self._check_fallback(body)
        if route_to is None or fallback is None:
            return None
        return DefaultRule(index, route_to, fallback, pos)

    def _check_rule(self, spec: LMap, index: int) -> Rule | None:
        before = len(self.out.diagnostics)
        self.out.check_keys(spec, RULE_KEYS, f"rule {index}", required=("match", "route_to"))
        name = f"rule-{index}"
        if (name_node := spec.get("name")) is not None:
            name = self.out.expect_str(name_node, "rule 'name'") or name
            if name == "default":
                self.out.err(BAD_VALUE, "'default' is reserved for the default rule", name_node.pos)
        if (desc := spec.get("description")) is not None:
            self.out.expect_str(desc, "rule 'description'", nonempty=False)
        conditions: tuple[Condition, ...] = ()
        if (match_node := spec.get("match")) is not None:
            conditions = self._check_match(match_node, spec.keys["match"])
        route_to = self._check_route_to(spec)
        fallback = self._check_fallback(spec)
        if len(self.out.diagnostics) != before or route_to is None or fallback is None:
            return None
        return Rule(index, name, conditions, route_to, fallback, spec.pos)

    def _check_match(self, node: LNode, key_pos: Position) -> tuple[Condition, ...]:
        # `match:` with nothing after it is YAML null: the same mistake as `match: {}`.
        empty = isinstance(node, LScalar) and node.value is None
        match = None if empty else self.out.expect_map(node, "'match'", key_pos)
        if empty or (match is not None and not match.entries):
            self.out.err(
                EMPTY_MATCH,
                "'match' is empty: a rule needs at least one condition",
                key_pos,
                "to route every remaining request, use a 'default' rule instead",
            )
            return ()
        if match is None:
            return ()
        conditions: list[Condition] = []
        for field, value in match.entries.items():
            pos = match.keys[field]
            condition = self._check_condition(field, value, pos)
            if condition is not None:
                conditions.append(condition)
        return tuple(conditions)

    def _check_condition(self, field: str, node: LNode, pos: Position) -> Condition | None:
        if field.startswith(LABEL_PREFIX):
            label = field[len(LABEL_PREFIX) :]
            if not _LABEL_KEY_RE.match(label):
                self.out.err(
                    UNKNOWN_KEY,
                    f"bad label key in '{field}': write labels.<key> with a key of "
                    "letters, digits, '_', '-' or '.'",
                    pos,
                )
                return None
            return self._check_string_condition(field, node)
        if field.startswith(HEALTH_PREFIX):
            condition = self._check_string_condition(field, node)
            return condition and check_endpoint_health(self.out, condition, self.registry)
        kind = MATCH_FIELDS.get(field)
        if kind is None:
            self.out.err(
                UNKNOWN_KEY,
                f"unknown match key '{field}'",
                pos,
                did_you_mean(field, MATCH_FIELDS)
                or f"match keys: {', '.join(MATCH_FIELDS)}, labels.<key>, "
                "endpoint_health.<endpoint>",
            )
            return None
        if kind is FieldKind.STRING:
            condition = self._check_string_condition(field, node)
            if field == "operation" and condition is not None:
                return self._check_operations(condition)
            return condition
        return self._check_number_condition(field, node)

    def _check_operations(self, condition: StringCondition) -> StringCondition | None:
        unknown = [v for v in condition.literals if v not in OPERATIONS]
        for value in unknown:
            self.out.err(
                BAD_VALUE,
                f"match key 'operation': unknown operation '{value}'",
                condition.pos,
                did_you_mean(value, OPERATIONS) or f"operations: {', '.join(OPERATIONS)}",
            )
        return None if unknown else condition

    def _check_string_condition(self, field: str, node: LNode) -> StringCondition | None:
        what = f"match key '{field}'"
        if isinstance(node, LSeq):
            if not node.items:
                self.out.err(BAD_VALUE, f"{what}: the list of values is empty", node.pos)
                return None
            values: list[str] = []
            for item in node.items:
                value = self.out.expect_str(item, f"each value of {what}")
                if value is not None:
                    values.append(value)
            if len(values) != len(node.items):
                return None
            as_list = True
        else:
            value = self.out.expect_str(node, what)
            if value is None:
                return None
            values, as_list = [value], False
        unique = tuple(dict.fromkeys(values))
        literals = tuple(v for v in unique if "*" not in v)
        globs = tuple(v for v in unique if "*" in v)
        return StringCondition(field, unique, literals, globs, as_list, node.pos)

    def _check_number_condition(
        self, field: str, node: LNode, what: str | None = None
    ) -> NumberCondition | None:
        what = what or f"match key '{field}'"
        value = node.value if isinstance(node, LScalar) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                self.out.err(BAD_VALUE, f"{what} must be a finite number", node.pos)
                return None
            return NumberCondition(field, "==", value, node.pos)
        if isinstance(value, str):
            m = _COMPARISON_RE.match(value)
            if m is None:
                self.out.err(
                    BAD_COMPARISON,
                    f"bad comparison '{value}' for {what}",
                    node.pos,
                    'write a number or one of "<N", "<=N", ">N", ">=N", "==N", "!=N"',
                )
                return None
            text = m.group(2)
            number: int | float = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
            if not math.isfinite(number):
                self.out.err(BAD_COMPARISON, f"{what}: {text} is out of range", node.pos)
                return None
            return NumberCondition(field, m.group(1), number, node.pos)
        self.out.wrong_type(node, what, 'a number or a comparison string such as "<400"')
        return None

    def _check_route_to(self, spec: LMap) -> str | None:
        node = spec.get("route_to")
        if node is None:
            return None
        name = self.out.expect_str(node, "'route_to'")
        if name is None:
            return None
        return name if self._known_endpoint(name, node.pos, "route_to") else None

    def _check_fallback(self, spec: LMap) -> tuple[str, ...] | None:
        node = spec.get("fallback")
        if node is None:
            return ()
        seq = self.out.expect_seq(node, "'fallback'")
        if seq is None:
            return None
        names: list[str] = []
        ok = True
        for item in seq.items:
            name = self.out.expect_str(item, "each 'fallback' entry")
            if name is None or not self._known_endpoint(name, item.pos, "fallback"):
                ok = False
                continue
            if name in names:
                self.out.err(BAD_VALUE, f"'fallback' lists '{name}' twice", item.pos)
                ok = False
                continue
            names.append(name)
        return tuple(names) if ok else None

    def _known_endpoint(self, name: str, pos: Position, key: str) -> bool:
        if name in self.registry.endpoints:
            return True
        if not self.registry.readable:
            return False  # the registry's own error says why
        if name in self.registry.rejected:
            self.out.err(
                UNKNOWN_ENDPOINT,
                f"'{key}' names endpoint '{name}', whose entry in {self.registry.path} has errors",
                pos,
            )
            return False
        known = self.registry.endpoints
        self.out.err(
            UNKNOWN_ENDPOINT,
            f"'{key}' names unknown endpoint '{name}' (registry: {self.registry.path})",
            pos,
            did_you_mean(name, known)
            or (f"known endpoints: {', '.join(sorted(known))}" if known else None),
        )
        return False

    def _check_shadowing(self, rules: list[Rule]) -> None:
        for later, earlier in shadowed_rules(rules):
            self.out.add(_shadow_warning(later, earlier))

    # -- tests -------------------------------------------------------------

    def _check_tests(self, seq: LSeq, rule_names: set[str]) -> list[PolicyTest]:
        tests: list[PolicyTest] = []
        for index, item in enumerate(seq.items):
            spec = self.out.expect_map(item, f"test {index}", item.pos)
            if spec is None:
                continue
            before = len(self.out.diagnostics)
            self.out.check_keys(spec, TEST_KEYS, f"test {index}", required=TEST_KEYS)
            name = None
            if (name_node := spec.get("name")) is not None:
                name = self.out.expect_str(name_node, "test 'name'")
            input_doc = self._check_test_input(spec)
            expect = self._check_expect(spec, rule_names)
            if (
                len(self.out.diagnostics) != before
                or name is None
                or input_doc is None
                or expect is None
            ):
                continue
            tests.append(PolicyTest(name, input_doc, expect, spec.pos))
        return tests

    def _check_test_input(self, spec: LMap) -> dict[str, Any] | None:
        input_map = self.out.expect_table(spec, "input", "test 'input'", INPUT_FIELDS)
        if input_map is None:
            return None
        for key, value_node in input_map.entries.items():
            if key not in INPUT_FIELDS:
                continue
            types, wanted = INPUT_FIELDS[key]
            value = plain(value_node)
            if not isinstance(value, types) or isinstance(value, bool):
                self.out.wrong_type(value_node, f"test input '{key}'", wanted)
        labels = input_map.get("labels")
        if isinstance(labels, LMap):
            for key, label in labels.entries.items():
                if not (isinstance(label, LScalar) and isinstance(label.value, str)):
                    # A label that is not a string can never match a condition.
                    self.out.wrong_type(label, f"test input 'labels.{key}'", "a string")
        user = input_map.get("user")
        if isinstance(user, LMap):
            self.out.check_keys(user, USER_FIELDS, "test input 'user'")
            roles = user.get("roles")
            if roles is not None and (
                not isinstance(roles, LSeq)
                or not all(isinstance(r, LScalar) and isinstance(r.value, str) for r in roles.items)
            ):
                self.out.wrong_type(roles, "test input 'user.roles'", "a list of strings")
        budget = input_map.get("budget")
        if isinstance(budget, LMap):
            self.out.check_keys(budget, tuple(BUDGET_FIELDS), "test input 'budget'")
            for key, node in budget.entries.items():
                if key in BUDGET_FIELDS:
                    types, wanted = BUDGET_FIELDS[key]
                    value = plain(node)
                    if not isinstance(value, types) or isinstance(value, bool):
                        self.out.wrong_type(node, f"test input 'budget.{key}'", wanted)
        result = plain(input_map)
        assert isinstance(result, dict)
        return result

    def _check_expect(self, spec: LMap, rule_names: set[str]) -> dict[str, Any] | None:
        expect_map = self.out.expect_table(spec, "expect", "test 'expect'", EXPECT_KEYS)
        if expect_map is None:
            return None
        if not expect_map.entries:
            self.out.err(
                MISSING_KEY,
                "test 'expect' is empty: give route_to, rule, fallback or deny",
                expect_map.pos,
            )
            return None
        expect: dict[str, Any] = {}
        if (route := expect_map.get("route_to")) is not None:
            if isinstance(route, LScalar) and route.value is None:
                expect["route_to"] = None
            elif (
                name := self.out.expect_str(route, "expected 'route_to'")
            ) is not None and self._known_endpoint(name, route.pos, "expect.route_to"):
                expect["route_to"] = name
        if (rule := expect_map.get("rule")) is not None:
            if isinstance(rule, LScalar) and rule.value is None:
                expect["rule"] = None
            elif (name := self.out.expect_str(rule, "expected 'rule'")) is not None:
                if name in rule_names:
                    expect["rule"] = name
                else:
                    self.out.err(
                        BAD_VALUE,
                        f"expected rule '{name}' is not a rule of this policy",
                        rule.pos,
                        did_you_mean(name, rule_names),
                    )
        if (fallback := expect_map.get("fallback")) is not None:
            names = [
                (item.value, item.pos)
                for item in (fallback.items if isinstance(fallback, LSeq) else ())
                if isinstance(item, LScalar) and isinstance(item.value, str)
            ]
            if not isinstance(fallback, LSeq) or len(names) != len(fallback.items):
                self.out.wrong_type(fallback, "expected 'fallback'", "a list of endpoint names")
            else:
                # A list, not a generator: report every unknown name, not just the first.
                known = [self._known_endpoint(n, p, "expect.fallback") for n, p in names]
                if all(known):
                    expect["fallback"] = [n for n, _ in names]
        if (deny := expect_map.get("deny")) is not None:
            flag = self.out.expect_bool(deny, "expected 'deny'")
            if flag is not None:
                expect["deny"] = flag
        return expect


def _declared_name(spec: LMap, index: int) -> str | None:
    """A rule's name as written, or its default name; None when 'name' is not a
    usable string (that error is reported by the rule's own check)."""
    node = spec.get("name")
    if node is None:
        return f"rule-{index}"
    if isinstance(node, LScalar) and isinstance(node.value, str) and node.value.strip():
        return node.value
    return None


def _key_pos(spec: LMap, key: str) -> Position:
    node = spec.get(key)
    return node.pos if node is not None else spec.pos


def _ops(names: frozenset[str] | set[str]) -> str:
    return " or ".join(sorted(names)) or "nothing"


def _shadow_warning(later: Rule, earlier: Rule) -> Diagnostic:
    return warning(
        SHADOWED_RULE,
        f"rule '{later.name}' can never match: rule '{earlier.name}' (line "
        f"{earlier.pos.line}) comes first and matches every request it matches",
        later.pos,
        "reorder the rules (more specific first) or remove this one",
    )

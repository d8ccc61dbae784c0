"""Unit tests of the translator's pure parts: shadowing, Rego spelling, loading."""

from __future__ import annotations

import pytest

from translator import rego
from translator.errors import Position
from translator.model import NumberCondition, Rule, StringCondition
from translator.shadow import glob_matches, implies, shadowed_rules
from translator.source import LMap, LScalar, LSeq, load, plain

P = Position("p.yaml", 1, 1)


def s(field: str, *values: str, as_list: bool = False) -> StringCondition:
    literals = tuple(v for v in values if "*" not in v)
    globs = tuple(v for v in values if "*" in v)
    return StringCondition(field, values, literals, globs, as_list or len(values) > 1, P)


def n(field: str, op: str, value: float) -> NumberCondition:
    return NumberCondition(field, op, value, P)


@pytest.mark.parametrize(
    ("stronger", "weaker", "expected"),
    [
        ([s("tenant", "a")], [s("tenant", "a")], True),
        ([s("tenant", "a")], [s("tenant", "a", "b")], True),
        ([s("tenant", "a", "b")], [s("tenant", "a")], False),
        ([s("tenant", "acme-1")], [s("tenant", "acme-*")], True),
        ([s("tenant", "acme-*")], [s("tenant", "acme-*")], True),
        ([s("tenant", "acme-*")], [s("tenant", "*")], True),
        ([s("tenant", "acme-*")], [s("tenant", "ac*")], False),  # not proven: no warning
        ([s("tenant", "a*")], [s("tenant", "a1")], False),
        ([s("tenant", "a"), s("model", "m")], [s("tenant", "a")], True),
        ([s("tenant", "a")], [s("tenant", "a"), s("model", "m")], False),
        ([s("tenant", "a")], [s("data_class", "a")], False),
        ([n("latency_budget_ms", "<", 300)], [n("latency_budget_ms", "<", 400)], True),
        ([n("latency_budget_ms", "<", 400)], [n("latency_budget_ms", "<", 400)], True),
        ([n("latency_budget_ms", "<=", 400)], [n("latency_budget_ms", "<", 400)], False),
        ([n("latency_budget_ms", "<", 400)], [n("latency_budget_ms", "<=", 400)], True),
        ([n("latency_budget_ms", "==", 5)], [n("latency_budget_ms", ">=", 5)], True),
        ([n("latency_budget_ms", "==", 5)], [n("latency_budget_ms", ">", 5)], False),
        ([n("latency_budget_ms", ">", 5)], [n("latency_budget_ms", "!=", 5)], True),
        ([n("latency_budget_ms", ">=", 5)], [n("latency_budget_ms", "!=", 5)], False),
        ([n("latency_budget_ms", "==", 4)], [n("latency_budget_ms", "!=", 5)], True),
        ([n("latency_budget_ms", "!=", 5)], [n("latency_budget_ms", "!=", 5)], True),
        ([n("latency_budget_ms", "!=", 5)], [n("latency_budget_ms", ">", 0)], False),
        ([n("cost_cap_per_1k", "<", 0.001)], [n("cost_cap_per_1k", "<", 0.002)], True),
        ([s("latency_budget_ms", "1")], [n("latency_budget_ms", "==", 1)], False),
    ],
)
def test_implies(stronger: list, weaker: list, expected: bool) -> None:
    assert implies(stronger, weaker) is expected


def _rule(index: int, *conditions: StringCondition | NumberCondition) -> Rule:
    return Rule(index, f"r{index}", conditions, "x", (), Position("p.yaml", index + 1, 1))


def test_shadowed_rules_names_the_first_shadowing_rule() -> None:
    rules = [
        _rule(0, s("tenant", "a"), s("model", "m")),
        _rule(1, s("tenant", "b")),
        _rule(2, n("latency_budget_ms", "<", 100)),
        _rule(3, s("tenant", "b"), s("model", "m")),  # shadowed by 1
        _rule(4, s("tenant", "a"), s("model", "m"), n("latency_budget_ms", "<", 5)),  # by 0
        _rule(5, s("tenant", "c"), n("latency_budget_ms", "<", 50)),  # by 2 (unpinned)
        _rule(6, s("tenant", "a"), s("model", "other")),  # not shadowed
    ]
    found = [(later.name, earlier.name) for later, earlier in shadowed_rules(rules)]
    assert found == [("r3", "r1"), ("r4", "r0"), ("r5", "r2")]


@pytest.mark.parametrize(
    ("glob", "value", "expected"),
    [
        ("acme-*", "acme-1", True),
        ("acme-*", "acme-", True),
        ("*-prod", "eu-prod", True),
        ("a*b*c", "aXXbYYc", True),
        ("a*b*c", "aXXbYY", False),
        ("a?c*", "abcd", False),  # `?` is literal in the policy language
        ("a?c*", "a?cd", True),
        ("*", "", True),
        ("a.b*", "axb", False),
    ],
)
def test_glob_matches(glob: str, value: str, expected: bool) -> None:
    assert glob_matches(glob, value) is expected


def test_rego_spelling() -> None:
    assert rego.string('a "quoted" \\ value\n') == '"a \\"quoted\\" \\\\ value\\n"'
    assert rego.string("ünïcode") == '"ünïcode"'
    assert rego.number(400) == "400"
    assert rego.number(400.0) == "400"
    assert rego.number(0.002) == "0.002"
    assert rego.value({"a": [1, None, True], "b": {"c": "d"}}) == (
        '{"a": [1, null, true], "b": {"c": "d"}}'
    )
    assert rego.ref("input", ("labels", "team")) == "input.labels.team"
    assert rego.ref("input", ("labels", "in")) == 'input.labels["in"]'
    assert rego.ref("input", ("labels", "cost-center")) == 'input.labels["cost-center"]'
    assert rego.glob_pattern("a?[b]{c}\\*") == '"a\\\\?\\\\[b\\\\]\\\\{c\\\\}\\\\\\\\*"'
    assert rego.identifier("PII never leaves the VPC!", "test_") == "test_pii_never_leaves_the_vpc"
    assert rego.identifier("!!!", "test_") == "test_unnamed"
    with pytest.raises(ValueError, match="finite"):
        rego.number(float("nan"))


def test_load_keeps_positions_of_every_node() -> None:
    doc = load("a:\n  - x: 1\n    y: [true, null]\n", "f.yaml")
    assert doc.diagnostics == []
    root = doc.root
    assert isinstance(root, LMap)
    assert root.keys["a"] == Position("f.yaml", 1, 1)
    seq = root.entries["a"]
    assert isinstance(seq, LSeq)
    item = seq.items[0]
    assert isinstance(item, LMap)
    assert item.pos == Position("f.yaml", 2, 5)
    assert item.keys["y"] == Position("f.yaml", 3, 5)
    y = item.entries["y"]
    assert isinstance(y, LSeq)
    assert y.items[1] == LScalar(None, Position("f.yaml", 3, 15))
    assert plain(root) == {"a": [{"x": 1, "y": [True, None]}]}


def test_load_reports_syntax_errors_and_duplicate_keys() -> None:
    doc = load("a: [1, 2\nb: 3\n", "f.yaml")
    assert doc.root is None
    assert [d.headline() for d in doc.diagnostics] == [
        "f.yaml:2:2: error[E001]: YAML syntax error: did not find expected ',' or ']' "
        "(while parsing a flow sequence)"
    ]
    doc = load("a: 1\nb: 2\na: 3\n", "f.yaml")
    assert [d.headline() for d in doc.diagnostics] == [
        "f.yaml:3:1: error[E012]: key 'a' is given twice in this mapping (first at line 1)"
    ]

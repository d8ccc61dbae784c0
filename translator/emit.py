"""Emit stage: the IR rendered as Rego with jinja2 templates.

Templates only lay out text; every literal is spelled and escaped here by
:mod:`translator.rego`. Output is a pure function of the IR, so the same policy
always gives byte-identical files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jinja2

from translator import rego
from translator.classes import classes_data
from translator.ir import IRBranch, IRCondition, IRPolicy, IRTest, subject_root

POLICY_PACKAGE = "kamiwaza.policy"
# Where a candidate policy is compiled to be decided beside the live one (the
# gateway's `shadow_policy`, `kamiwaza policy diff`): the entry point reads it
# as data.kamiwaza.shadow.
SHADOW_PACKAGE = "kamiwaza.shadow"
POLICY_FILE = "kamiwaza/policy/policy.rego"
EXPLAIN_FILE = "kamiwaza/policy/explain.rego"
TEST_FILE = "kamiwaza/policy/policy_test.rego"
DATA_FILE = "data.json"

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("translator", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # Rego, not HTML: literals are escaped by translator.rego
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


@dataclass(frozen=True, slots=True)
class _BranchView:
    result: str
    body: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _TestView:
    ident: str
    title: str
    source: str
    input: str
    got: str
    want: str
    report: str


def emit(
    ir: IRPolicy, registry_data: dict[str, Any], classes: dict[str, Any] | None = None
) -> dict[str, str]:
    """All generated files, by path relative to the output directory.

    `classes` is `data.kamiwaza.classes` (:func:`translator.classes.classes_data`;
    default: the built-in classes)."""
    data = {"endpoints": registry_data, "classes": classes or classes_data()}
    files = {
        POLICY_FILE: emit_rules(ir),
        DATA_FILE: json.dumps({"kamiwaza": data}, indent=2) + "\n",
    }
    if ir.tests:
        files[TEST_FILE] = _render(
            "policy_test.rego.j2", source=_comment(ir.source_path), tests=_test_views(ir.tests)
        )
    return files


def emit_rules(ir: IRPolicy, package: str = POLICY_PACKAGE) -> str:
    """The compiled rules as one Rego module of `package` (a dotted name)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*", package):
        raise ValueError(f"not a Rego package name: {package!r}")
    return _render(
        "policy.rego.j2",
        package=package,
        source=_comment(ir.source_path),
        revision=rego.string(ir.revision),
        branches=[_branch_view(b) for b in ir.branches],
        default=_branch_view(ir.default) if ir.default else None,
        any_helper=ir.uses_any_helper,
        health=rego.value(ir.health) if ir.health is not None else None,
    )


def shadow_file(package: str = SHADOW_PACKAGE) -> str:
    """Where the module of `package` goes, relative to the output directory."""
    return package.replace(".", "/") + "/policy.rego"


@dataclass(frozen=True, slots=True)
class _ExplainCondition:
    field: str
    op: str
    expected: str
    actual: str
    rule: str
    body: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _ExplainBranch:
    index: int
    name: str
    source: str
    route_to: str
    conditions: tuple[_ExplainCondition, ...]


def emit_explain(ir: IRPolicy) -> dict[str, str]:
    """An extra file for `policy explain`: every condition of every rule evaluated alone."""
    branches = [
        _ExplainBranch(
            index=b.index,
            name=rego.string(b.name),
            source=rego.string(b.source),
            route_to=rego.string(b.route_to),
            conditions=tuple(
                _ExplainCondition(
                    field=rego.string(c.field),
                    op=rego.string(c.report_op),
                    expected=rego.value(c.report_expected),
                    actual=f"object.get({subject_root(c.field)}, {rego.value(list(c.path))}, null)",
                    rule=f"_explain_{b.index}_{n}",
                    body=tuple(_body(c)),
                )
                for n, c in enumerate(b.conditions)
            ),
        )
        for b in ir.branches
    ]
    return {
        EXPLAIN_FILE: _render("explain.rego.j2", source=_comment(ir.source_path), branches=branches)
    }


def _render(template: str, **context: Any) -> str:
    text = _env.get_template(template).render(**context)
    # Optional sections leave runs of blank lines; opa fmt wants at most one.
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


def _comment(text: str) -> str:
    """Text safe to place after `#` on one line."""
    return " ".join(text.splitlines())


def _branch_view(branch: IRBranch) -> _BranchView:
    rule = (
        "{"
        + f'"index": {branch.index}, "name": {rego.string(branch.name)}, '
        + f'"source": {rego.string(branch.source)}'
        + "}"
    )
    records = ", ".join(_record(c) for c in branch.conditions)
    result = (
        "{"
        + f'"route_to": {rego.string(branch.route_to)}, '
        + f'"fallback": {rego.value(list(branch.fallback))}, '
        + f'"rule": {rule}, '
        + f'"conditions": [{records}]'
        + "}"
    )
    body: list[str] = []
    for condition in branch.conditions:
        body.extend(_body(condition))
    return _BranchView(result, tuple(body))


def _record(c: IRCondition) -> str:
    return (
        "{"
        + f'"field": {rego.string(c.field)}, "op": {rego.string(c.report_op)}, '
        + f'"expected": {rego.value(c.report_expected)}, '
        + f'"actual": {rego.ref(subject_root(c.field), c.path)}, "result": true'
        + "}"
    )


def _body(c: IRCondition) -> list[str]:
    lines: list[str] = []
    subject = rego.ref(subject_root(c.field), c.path)
    if c.any_element:
        # Bound per branch: each else-branch body is its own scope.
        lines.append(f"some element in {subject}")
        subject = "element"
    test = c.test
    if test.kind == "eq":
        lines.append(f"{subject} == {rego.string(test.literals[0])}")
    elif test.kind == "in":
        lines.append(f"{subject} in {rego.string_set(test.literals)}")
    elif test.kind == "glob":
        lines.append(f"glob.match({rego.glob_pattern(test.globs[0])}, null, {subject})")
    elif test.kind == "any":
        globs = "[" + ", ".join(rego.glob_pattern(g) for g in test.globs) + "]"
        lines.append(f"_matches_any({subject}, {rego.string_set(test.literals)}, {globs})")
    elif test.kind == "cmp":
        if test.op != "==":
            # Rego orders values of different types; a string must not compare as a number.
            lines.append(f"is_number({subject})")
        lines.append(f"{subject} {test.op} {rego.number(test.number)}")
    else:  # pragma: no cover - the IR has no other kinds
        raise ValueError(f"unknown test kind {test.kind!r}")
    return lines


# What a test reads from the decision for each key of its `expect`.
_GOT = {
    "route_to": "decision.route_to",
    "rule": 'object.get(decision, ["rule", "name"], null)',
    "fallback": "decision.fallback",
    "deny": "count(decision.deny) > 0",
}


def _test_views(tests: tuple[IRTest, ...]) -> list[_TestView]:
    views: list[_TestView] = []
    seen: set[str] = set()
    for test in tests:
        ident = rego.identifier(test.name, "test_")
        base, n = ident, 2
        while ident in seen:
            ident, n = f"{base}_{n}", n + 1
        seen.add(ident)
        got = "{" + ", ".join(f"{rego.string(key)}: {_GOT[key]}" for key in test.expect) + "}"
        views.append(
            _TestView(
                ident=ident,
                title=_comment(test.name),
                source=_comment(test.source),
                input=rego.value(test.input),
                got=got,
                want=rego.value(test.expect),
                report=rego.string(f"test '{test.name}' ({test.source})"),
            )
        )
    return views

"""Shadowing analysis: does an earlier rule match every request a later one does?

Rule B is shadowed by an earlier rule A when every condition of A is implied by
B's condition on the same attribute (A's conditions are the same or weaker). The
analysis is sound but not complete: when it cannot prove the implication (for
example, one glob against another) it says "not shadowed", so a warning is never
raised wrongly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from translator.model import Condition, NumberCondition, Rule, StringCondition


def shadowed_rules(rules: Sequence[Rule]) -> list[tuple[Rule, Rule]]:
    """Every (later, earlier) pair where `earlier` is the first rule shadowing `later`.

    Comparing each rule with all earlier ones is quadratic, which a generated
    1,000-rule policy feels. Most rules pin some attribute to one literal
    (`tenant: acme`); such a rule can only shadow a later rule that pins the same
    attribute to the same literal, so rules are bucketed by their first pinned
    attribute and only plausible candidates are compared.
    """
    buckets: dict[tuple[str, str], list[Rule]] = {}
    unpinned: list[Rule] = []
    found: list[tuple[Rule, Rule]] = []
    for rule in rules:
        pins = _pins(rule)
        candidates = list(unpinned)
        for pin in pins:
            candidates.extend(buckets.get(pin, ()))
        candidates.sort(key=lambda r: r.index)
        for earlier in candidates:
            if implies(rule.conditions, earlier.conditions):
                found.append((rule, earlier))
                break
        if pins:
            buckets.setdefault(pins[0], []).append(rule)
        else:
            unpinned.append(rule)
    return found


def _pins(rule: Rule) -> list[tuple[str, str]]:
    """(field, literal) for each condition that admits exactly one string."""
    return [
        (c.field, c.literals[0])
        for c in rule.conditions
        if isinstance(c, StringCondition) and len(c.literals) == 1 and not c.globs
    ]


def implies(stronger: Sequence[Condition], weaker: Sequence[Condition]) -> bool:
    """True when every request satisfying `stronger` also satisfies `weaker`."""
    by_field = {c.field: c for c in stronger}
    for condition in weaker:
        own = by_field.get(condition.field)
        if own is None or not _condition_implies(own, condition):
            return False
    return True


def _condition_implies(a: Condition, b: Condition) -> bool:
    if isinstance(a, StringCondition) and isinstance(b, StringCondition):
        return _strings_imply(a, b)
    if isinstance(a, NumberCondition) and isinstance(b, NumberCondition):
        return _set_of(a).subset_of(_set_of(b))
    return False


def _strings_imply(a: StringCondition, b: StringCondition) -> bool:
    # For user_role ("some role matches") the same test is right: a role that
    # matches one of a's values matches one of b's.
    for literal in a.literals:
        if literal not in b.literals and not any(glob_matches(g, literal) for g in b.globs):
            return False
    # A glob of `a` is covered only by the same glob or by a catch-all in `b`.
    return all(g in b.globs or any(_is_catch_all(h) for h in b.globs) for g in a.globs)


def _is_catch_all(glob: str) -> bool:
    return set(glob) == {"*"}


@lru_cache(maxsize=1024)
def _glob_regex(glob: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")), re.DOTALL)


def glob_matches(glob: str, value: str) -> bool:
    """The policy language's glob: `*` matches any run of characters, nothing else is special."""
    return _glob_regex(glob).fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class _Interval:
    low: float
    high: float
    low_closed: bool
    high_closed: bool

    def within(self, other: _Interval) -> bool:
        low_ok = self.low > other.low or (
            self.low == other.low and (other.low_closed or not self.low_closed)
        )
        high_ok = self.high < other.high or (
            self.high == other.high and (other.high_closed or not self.high_closed)
        )
        return low_ok and high_ok


@dataclass(frozen=True, slots=True)
class _NumberSet:
    """A union of disjoint intervals of the real line."""

    parts: tuple[_Interval, ...]

    def subset_of(self, other: _NumberSet) -> bool:
        return all(any(p.within(q) for q in other.parts) for p in self.parts)


_INF = float("inf")


def _set_of(c: NumberCondition) -> _NumberSet:
    n = float(c.value)
    table = {
        "==": (_Interval(n, n, True, True),),
        "<": (_Interval(-_INF, n, False, False),),
        "<=": (_Interval(-_INF, n, False, True),),
        ">": (_Interval(n, _INF, False, False),),
        ">=": (_Interval(n, _INF, True, False),),
        "!=": (_Interval(-_INF, n, False, False), _Interval(n, _INF, False, False)),
    }
    return _NumberSet(table[c.op])

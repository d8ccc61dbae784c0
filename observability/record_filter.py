"""Which audit records a summary or listing covers: `kamiwaza stats` filters
and the console's. Values are compared with the metrics' labels
(:func:`observability.metrics.label` / `rule_label`), so `none` selects the
requests refused before routing, and `override:<name>` those an override routed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from observability.metrics import label, rule_label


class FilterError(ValueError):
    """A filter value is malformed; the message says which and why."""


def status_matcher(spec: str | None) -> Callable[[int], bool]:
    """`200`, a class (`5xx`) or a comma-separated list of either (`429,5xx`)."""
    if not spec:
        return lambda status: True
    classes: set[int] = set()
    exact: set[int] = set()
    for raw in spec.split(","):
        part = raw.strip().lower()
        if re.fullmatch(r"[1-5]xx", part):
            classes.add(int(part[0]))
        elif part.isdigit():
            exact.add(int(part))
        else:
            raise FilterError(f"{part!r}: expected a status (200), a class (5xx) or a list")
    return lambda status: status in exact or status // 100 in classes


def record_rule(record: Mapping[str, Any]) -> str:
    rule = record.get("rule")
    return rule_label(rule if isinstance(rule, Mapping) else None, record.get("overridden_by"))


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Every given field must hold (any of its values); empty: no constraint."""

    tenants: frozenset[str] = frozenset()
    rules: frozenset[str] = frozenset()
    endpoints: frozenset[str] = frozenset()
    operations: frozenset[str] = frozenset()
    data_classes: frozenset[str] = frozenset()
    status: str | None = None

    @classmethod
    def of(
        cls,
        *,
        tenants: Iterable[str] = (),
        rules: Iterable[str] = (),
        endpoints: Iterable[str] = (),
        operations: Iterable[str] = (),
        data_classes: Iterable[str] = (),
        status: str | None = None,
    ) -> RecordFilter:
        """A filter; raises FilterError for a malformed status spec."""
        status_matcher(status)
        return cls(
            frozenset(t for t in tenants if t),
            frozenset(r for r in rules if r),
            frozenset(e for e in endpoints if e),
            frozenset(o for o in operations if o),
            frozenset(d for d in data_classes if d),
            status or None,
        )

    @property
    def active(self) -> bool:
        return bool(
            self.tenants
            or self.rules
            or self.endpoints
            or self.operations
            or self.data_classes
            or self.status
        )

    def describe(self) -> str:
        parts = [
            f"{name}={','.join(sorted(values))}"
            for name, values in (
                ("tenant", self.tenants),
                ("rule", self.rules),
                ("endpoint", self.endpoints),
                ("operation", self.operations),
                ("data_class", self.data_classes),
            )
            if values
        ]
        if self.status:
            parts.append(f"status={self.status}")
        return " ".join(parts)

    def apply(self, records: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        if not self.active:
            yield from records
            return
        status_ok = status_matcher(self.status)
        for record in records:
            status = record.get("status")
            if (
                (self.tenants and label(record.get("tenant")) not in self.tenants)
                or (self.rules and record_rule(record) not in self.rules)
                or (self.endpoints and label(record.get("endpoint")) not in self.endpoints)
                or (self.operations and label(record.get("operation")) not in self.operations)
                or (self.data_classes and label(record.get("data_class")) not in self.data_classes)
                or not status_ok(status if isinstance(status, int) else 0)
            ):
                continue
            yield record

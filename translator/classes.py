"""Data classes as OPA knows them: the ordered list, and which must stay in the VPC.

The gateway's configuration names both (`data_classes`, `in_vpc_data_classes`);
they reach OPA as `data.kamiwaza.classes` beside the compiled policy, so that
the in-VPC guard protects the classes the operator configured, whatever they
are called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

DEFAULT_DATA_CLASSES: Final = ("public", "internal", "confidential", "pii-restricted")


def classes_data(
    order: Sequence[str] = DEFAULT_DATA_CLASSES, in_vpc_only: Sequence[str] | None = None
) -> dict[str, Any]:
    """`data.kamiwaza.classes`; by default only the highest class must stay in the VPC."""
    protected = list(in_vpc_only) if in_vpc_only is not None else list(order[-1:])
    unknown = [c for c in protected if c not in order]
    if unknown:
        raise ValueError(f"not among the data classes: {', '.join(unknown)}")
    return {"order": list(order), "in_vpc_only": protected}

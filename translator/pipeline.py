"""The translator pipeline: load → check → lower → emit, and writing the result.

Each stage is a pure function; this module only reads the input files, wires the
stages together and renders diagnostics against the source lines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from translator.check import check_policy
from translator.classes import DEFAULT_DATA_CLASSES
from translator.errors import MISSING_KEY, YAML_SYNTAX, Diagnostic, PolicyError, Position, error
from translator.ir import IRPolicy, lower
from translator.registry import Registry, check_registry
from translator.source import Document, load

DEFAULT_REGISTRY_NAME = "endpoints.yaml"


@dataclass
class CheckResult:
    policy_path: str
    registry: Registry
    diagnostics: list[Diagnostic]
    documents: dict[str, Document] = field(default_factory=dict)
    ir: IRPolicy | None = None

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    def render_diagnostics(self) -> str:
        """Every diagnostic with its source line, errors first in file order."""
        ordered = sorted(
            self.diagnostics,
            key=lambda d: (not d.is_error, d.pos.file, d.pos.line, d.pos.col),
        )
        blocks = []
        for d in ordered:
            doc = self.documents.get(d.pos.file)
            blocks.append(d.render(doc.lines if doc else None))
        return "\n".join(blocks)


def default_registry_path(policy_path: str) -> str:
    """The registry beside the policy: `<policy dir>/endpoints.yaml`."""
    return str(Path(policy_path).parent / DEFAULT_REGISTRY_NAME)


def display_path(path: str) -> str:
    """How a file is named in diagnostics and `rule.source`: relative to the
    working directory when inside it or when given as a relative path (such as
    `../endpoints.yaml`), with forward slashes, so output does not depend on
    where the checkout lives. An absolute path outside the working directory
    stays absolute."""
    absolute = os.path.abspath(path)
    try:
        rel = os.path.relpath(absolute)
    except ValueError:  # pragma: no cover - other drive on Windows
        rel = absolute
    outside = rel == os.pardir or rel.startswith(os.pardir + os.sep)
    shown = absolute if outside and os.path.isabs(path) else rel
    return shown.replace(os.sep, "/")


def _load(path: str, shown: str, result: CheckResult) -> Document | None:
    """Read and parse one input file into `result`; None (and a diagnostic) if unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        result.diagnostics.append(
            error(MISSING_KEY, f"file not found: {shown}", Position(shown, 1, 1))
        )
        return None
    except (OSError, UnicodeDecodeError) as err:
        result.diagnostics.append(
            error(YAML_SYNTAX, f"cannot read {shown}: {err}", Position(shown, 1, 1))
        )
        return None
    doc = load(text, shown)
    result.documents[shown] = doc
    return doc


def check(
    policy_path: str,
    registry_path: str | None = None,
    *,
    data_classes: Sequence[str] | None = None,
    override_dirs: Sequence[str] = (),
) -> CheckResult:
    """Load and check a policy and its endpoint registry; lower it when valid.

    `data_classes` are the gateway's configured classes (default: the built-in
    list); the overrides in `override_dirs` are scanned for forced routes to
    endpoints the registry lacks (translator/lint.py)."""
    from translator import lint

    registry_path = registry_path or default_registry_path(policy_path)
    policy_shown, registry_shown = display_path(policy_path), display_path(registry_path)
    result = CheckResult(policy_shown, Registry(registry_shown, {}, readable=False), [])

    registry_doc = _load(registry_path, registry_shown, result)
    if registry_doc is not None:
        result.registry, found = check_registry(registry_doc)
        result.diagnostics.extend(found)

    policy_doc = _load(policy_path, policy_shown, result)
    if policy_doc is None:
        return result
    policy, found = check_policy(policy_doc, result.registry)
    result.diagnostics.extend(found)
    result.diagnostics.extend(
        lint.data_class_warnings(policy, data_classes or DEFAULT_DATA_CLASSES)
    )
    result.diagnostics.extend(lint.domain_warnings(policy))
    rego = lint.rego_files(override_dirs)
    for diagnostic in lint.override_route_warnings(rego, result.registry):
        result.diagnostics.append(diagnostic)
        shown = next(f for f in rego if f.path == diagnostic.pos.file)
        result.documents.setdefault(shown.path, Document(shown.path, shown.lines, None))
    if result.ok:
        result.ir = lower(policy, result.registry.opa_data())
    return result


def compile_policy(
    policy_path: str,
    registry_path: str | None = None,
    *,
    classes: dict[str, Any] | None = None,
) -> tuple[CheckResult, dict[str, str]]:
    """Check and emit. Raises :class:`PolicyError` when the policy has errors.

    `classes` is `data.kamiwaza.classes` (default: the built-in data classes)."""
    from translator.emit import emit  # jinja2 is only needed to emit

    order = tuple(classes["order"]) if classes else None
    result = check(policy_path, registry_path, data_classes=order)
    if result.ir is None:  # set only when there is no error
        raise PolicyError(result.diagnostics, result.render_diagnostics())
    return result, emit(result.ir, result.registry.opa_data(), classes)


def write_output(files: dict[str, str], out_dir: str) -> list[str]:
    """Write generated files under `out_dir`; removes stale generated files."""
    from translator.emit import TEST_FILE

    written = []
    stale = Path(out_dir) / TEST_FILE
    if TEST_FILE not in files and stale.exists():
        stale.unlink()
    for rel, text in sorted(files.items()):
        target = Path(out_dir) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
        written.append(str(target))
    return written

"""The translator pipeline: load → check → lower → emit, and writing the result.

Each stage is a pure function; this module only reads the input files, wires the
stages together and renders diagnostics against the source lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from translator.check import check_policy
from translator.errors import MISSING_KEY, YAML_SYNTAX, Diagnostic, PolicyError, Position, error
from translator.ir import IRPolicy, lower
from translator.registry import Registry, check_registry
from translator.source import Document, load

DEFAULT_REGISTRY_NAME = "endpoints.yaml"


@dataclass
class CheckResult:
    policy_path: str
    registry_path: str
    diagnostics: list[Diagnostic]
    documents: dict[str, Document] = field(default_factory=dict)
    registry: Registry | None = None
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


def _read(path: str, shown: str) -> tuple[str | None, Diagnostic | None]:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read(), None
    except FileNotFoundError:
        return None, error(MISSING_KEY, f"file not found: {shown}", Position(shown, 1, 1))
    except (OSError, UnicodeDecodeError) as err:
        return None, error(YAML_SYNTAX, f"cannot read {shown}: {err}", Position(shown, 1, 1))


def check(policy_path: str, registry_path: str | None = None) -> CheckResult:
    """Load and check a policy and its endpoint registry; lower it when valid."""
    registry_path = registry_path or default_registry_path(policy_path)
    policy_shown, registry_shown = display_path(policy_path), display_path(registry_path)
    result = CheckResult(policy_shown, registry_shown, [])

    registry_text, problem = _read(registry_path, registry_shown)
    if problem:
        result.diagnostics.append(problem)
        registry = Registry(registry_shown, {}, readable=False)
    else:
        assert registry_text is not None
        registry_doc = load(registry_text, registry_shown)
        result.documents[registry_shown] = registry_doc
        registry, found = check_registry(registry_doc)
        result.diagnostics.extend(found)
    result.registry = registry

    policy_text, problem = _read(policy_path, policy_shown)
    if problem:
        result.diagnostics.append(problem)
        return result
    assert policy_text is not None
    policy_doc = load(policy_text, policy_shown)
    result.documents[policy_shown] = policy_doc
    policy, found = check_policy(policy_doc, registry)
    result.diagnostics.extend(found)
    if result.ok:
        result.ir = lower(policy, registry.opa_data())
    return result


def compile_policy(
    policy_path: str, registry_path: str | None = None
) -> tuple[CheckResult, dict[str, str]]:
    """Check and emit. Raises :class:`PolicyError` when the policy has errors."""
    from translator.emit import emit  # jinja2 is only needed to emit

    result = check(policy_path, registry_path)
    if not result.ok or result.ir is None or result.registry is None:
        raise PolicyError(result.diagnostics)
    return result, emit(result.ir, result.registry.opa_data())


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

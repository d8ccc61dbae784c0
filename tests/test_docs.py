"""The design lives in the repository: the README links docs/design.md, and
nothing in the repository points outside it (to ../shared)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [ROOT / name for name in out.split("\0") if name]


def test_nothing_refers_outside_the_repository() -> None:
    outside = re.compile(r"\.\./shared|shared/DESIGN\.md")
    offenders = []
    for path in _tracked_files():
        if not path.is_file() or path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [
            f"{path.relative_to(ROOT)}:{n}"
            for n, line in enumerate(text.splitlines(), start=1)
            if outside.search(line)
        ]
    assert offenders == []


def test_the_readme_links_the_design_in_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "[docs/design.md](docs/design.md)" in readme
    design = (ROOT / "docs" / "design.md").read_text()
    assert design.startswith("# Design\n")
    # Every repository path the design names in a table exists.
    for path in re.findall(r"^\| `([a-z_/.]+)` \|", design, flags=re.MULTILINE):
        assert (ROOT / path).exists(), path

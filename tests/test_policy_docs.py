"""Keeps policies/README.md, the policy authors' reference, honest.

The README's examples follow one machine-readable convention (described in the
README itself, "How to read the examples"):

- An example is a fenced ```yaml block whose first line is `# file: <name>.yaml`;
  the block is the whole file, that comment included (it is line 1).
- A file whose name starts with `endpoints` is an endpoint registry. When a
  policy block follows it directly, the two are one example; alone, it is
  checked beside the README's `policy.yaml`, a policy with no rules.
- A policy example without a registry is checked beside a copy of
  `policies/endpoints.yaml`, named `endpoints.yaml`.
- A ```rego block whose first line is `# file: overrides/<name>/<name>.rego`,
  directly before a policy example, is an override of that example: written to
  that path, and the check runs with `--overrides overrides`.
- A ```text block directly after an example is exactly what
  `kamiwaza policy check` prints on stderr for it. An example without one must
  check with no diagnostics at all, and compile; its `tests:`, if any, must pass
  in OPA.

Every yaml block of the README must be an example and every text block an
example's output, so none goes untested (other output is shown as ```console).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from translator import check as policy_check
from translator import errors, model, registry
from translator.cli import policy as kamiwaza_policy
from translator.opa import run_tests
from translator.pipeline import compile_policy, write_output

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "policies" / "README.md"
EXAMPLE_REGISTRY = ROOT / "policies" / "endpoints.yaml"
REGO_DIR = ROOT / "rego"
# The README's examples show the documented example override at work.
EXAMPLE_OVERRIDES = ROOT / "policies" / "examples" / "overrides"

DEFAULT_REGISTRY = "endpoints.yaml"
PROBE_POLICY = "policy.yaml"  # the README's policy for registry-only examples
FILE_RE = re.compile(r"^# file: ([A-Za-z0-9][A-Za-z0-9._-]*\.yaml)$")
REGO_FILE_RE = re.compile(r"^# file: (overrides/[a-z0-9_]+/[a-z0-9_]+\.rego)$")
OVERRIDES_DIR = "overrides"
SUMMARY_RE = re.compile(r"^\d+ error\(s\), \d+ warning\(s\)$")


@dataclass(frozen=True)
class Block:
    """A fenced block of the README; `start`/`end` index its fence lines."""

    lang: str
    body: str
    start: int
    end: int


@dataclass
class Example:
    id: str
    line: int  # 1-based line of the example's first fence, for messages
    policy: str  # file name of the policy to check
    registry: str | None  # file name of the example's own registry, if any
    files: dict[str, str] = field(default_factory=dict)
    expected: str | None = None  # the documented stderr; None: a valid example

    @property
    def registry_name(self) -> str:
        return self.registry or DEFAULT_REGISTRY


def parse_blocks(lines: list[str]) -> tuple[list[Block], list[str]]:
    blocks: list[Block] = []
    problems: list[str] = []
    opened: tuple[int, str] | None = None
    for index, line in enumerate(lines):
        if not line.startswith("```"):
            continue
        if opened is None:
            opened = (index, line[3:].strip())
        elif line.strip() == "```":
            start, lang = opened
            blocks.append(Block(lang, "\n".join(lines[start + 1 : index]), start, index))
            opened = None
        else:
            problems.append(f"line {index + 1}: fence inside the block opened at {opened[0] + 1}")
    if opened is not None:
        problems.append(f"line {opened[0] + 1}: block is never closed")
    return blocks, problems


def parse_examples(text: str) -> tuple[list[Example], list[str]]:
    """The README's examples, and every way it breaks the convention."""
    lines = text.splitlines()
    blocks, problems = parse_blocks(lines)

    def adjacent(i: int) -> Block | None:
        """The block right after blocks[i], if only blank lines separate them."""
        if i + 1 >= len(blocks):
            return None
        a, b = blocks[i], blocks[i + 1]
        between = lines[a.end + 1 : b.start]
        return b if all(not line.strip() for line in between) else None

    def file_name(block: Block) -> str | None:
        first = block.body.split("\n", 1)[0]
        m = FILE_RE.match(first)
        if m is None:
            problems.append(f"line {block.start + 1}: a yaml block must start with '# file: NAME'")
        return m.group(1) if m else None

    examples: list[Example] = []
    outputs: set[int] = set()  # the text blocks read as an example's output
    overrides: dict[str, str] = {}  # Rego blocks waiting for their policy example
    i = 0
    while i < len(blocks):
        block = blocks[i]
        if block.lang == "rego":
            m = REGO_FILE_RE.match(block.body.split("\n", 1)[0])
            following = adjacent(i)
            if m is None or following is None or following.lang != "yaml":
                problems.append(
                    f"line {block.start + 1}: a rego block must start with "
                    "'# file: overrides/<name>/<name>.rego' and precede a policy example"
                )
            else:
                overrides[m.group(1)] = block.body + "\n"
            i += 1
            continue
        if block.lang != "yaml":
            i += 1
            continue
        name = file_name(block)
        if name is None:
            i += 1
            continue
        files = {name: block.body + "\n", **overrides}
        overrides = {}
        if name.startswith("endpoints"):
            example = Example(Path(name).stem, block.start + 1, PROBE_POLICY, name, files)
            following = adjacent(i)
            policy = file_name(following) if following and following.lang == "yaml" else None
            if following is not None and policy and not policy.startswith("endpoints"):
                example.id, example.policy = Path(policy).stem, policy
                files[policy] = following.body + "\n"
                i += 1
        else:
            example = Example(Path(name).stem, block.start + 1, name, None, files)
        following = adjacent(i)
        if following is not None and following.lang == "text":
            example.expected = following.body
            outputs.add(following.start)
            i += 1
        examples.append(example)
        i += 1

    for block in blocks:
        if block.lang == "text" and block.start not in outputs:
            problems.append(f"line {block.start + 1}: a text block must follow an example")

    probes = [e for e in examples if e.policy == PROBE_POLICY and e.registry is None]
    if len(probes) != 1:
        problems.append(f"the README must show exactly one '# file: {PROBE_POLICY}' policy")
    else:
        for example in examples:
            if example.policy == PROBE_POLICY and example.registry is not None:
                example.files[PROBE_POLICY] = probes[0].files[PROBE_POLICY]
    seen: dict[str, int] = {}
    for example in examples:
        if example.id in seen:
            problems.append(
                f"line {example.line}: example '{example.id}' is also at line {seen[example.id]}"
            )
        seen.setdefault(example.id, example.line)
    return examples, problems


README_TEXT = README.read_text(encoding="utf-8")
EXAMPLES, PROBLEMS = parse_examples(README_TEXT)
INVALID = [e for e in EXAMPLES if e.expected is not None]
VALID = [e for e in EXAMPLES if e.expected is None]
VALID_WITH_TESTS = [e for e in VALID if re.search(r"^tests:", e.files[e.policy], re.M)]


def _params(examples: list[Example]) -> list[object]:
    return [pytest.param(e, id=e.id) for e in examples]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory, made the working directory so that paths print relative."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _materialise(example: Example, directory: Path) -> None:
    for name, text in example.files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text, encoding="utf-8")
    if example.registry is None:
        shutil.copyfile(EXAMPLE_REGISTRY, directory / DEFAULT_REGISTRY)


def _has_summary(expected: str) -> bool:
    """Whether the documented output ends with the `N error(s), M warning(s)` line."""
    _, sep, last = expected.rpartition("\n\n")
    return bool(sep and SUMMARY_RE.match(last))


def test_readme_follows_the_example_convention() -> None:
    assert PROBLEMS == []
    assert len(INVALID) >= 60, "expected an invalid example for every keyword"
    assert len(VALID) >= 20, "expected a valid example for every keyword"


@pytest.mark.parametrize("example", _params(INVALID))
def test_cli_prints_the_documented_output(example: Example, workdir: Path) -> None:
    """Exactly the documented diagnostics, with the summary line (and exit 1) only when
    there are errors."""
    assert example.expected is not None
    _materialise(example, workdir)
    args = ["check", example.policy]  # `kamiwaza policy check ...`
    if example.registry is not None:
        args += ["--endpoints", example.registry]
    if any(name.endswith(".rego") for name in example.files):
        args += ["--overrides", OVERRIDES_DIR]
    run = CliRunner().invoke(kamiwaza_policy, args)
    assert run.stderr == example.expected + "\n", f"README line {example.line}"
    assert run.exit_code == (1 if _has_summary(example.expected) else 0)


@pytest.mark.parametrize("example", _params(VALID))
def test_valid_example_compiles_without_diagnostics(example: Example, workdir: Path) -> None:
    _materialise(example, workdir)
    result, _ = compile_policy(example.policy, example.registry_name)
    assert result.render_diagnostics() == "", f"README line {example.line}"


@pytest.mark.integration
@pytest.mark.parametrize("example", _params(VALID_WITH_TESTS))
def test_valid_example_tests_pass_in_opa(example: Example, workdir: Path, opa_bin: str) -> None:
    """The `tests:` of a valid example state what the README claims; OPA checks them."""
    _materialise(example, workdir)
    result, files = compile_policy(example.policy, example.registry_name)
    assert result.ir is not None and result.ir.tests
    write_output(files, str(workdir / "out"))
    outcomes = run_tests([str(workdir / "out"), str(REGO_DIR), str(EXAMPLE_OVERRIDES)])
    ours = [o for o in outcomes if o.package == "data.kamiwaza.policy_test"]
    assert len(ours) == len(result.ir.tests)
    failed = [f"{o.name}: {o.error or ''} {o.output.strip()}" for o in ours if not o.passed]
    assert failed == [], f"README line {example.line}"


def _defined_codes() -> list[str]:
    return sorted(
        value
        for name, value in vars(errors).items()
        if name.isupper() and isinstance(value, str) and re.fullmatch(r"[EW]\d{3}", value)
    )


@pytest.mark.parametrize("code", _defined_codes())
def test_every_diagnostic_code_has_a_documented_example(code: str) -> None:
    if code == errors.UNREAD_INPUT:  # explain's, shown as a console example
        assert any(f"warning[{code}]:" in text for text in EXPLAIN_WARNINGS.values())
        return
    assert any(f"[{code}]:" in (e.expected or "") for e in INVALID)


def _explain_examples() -> dict[str, str]:
    """```console blocks `$ kamiwaza policy explain ... >/dev/null`: the command
    and what it prints on stderr, run from the project root."""
    blocks, _ = parse_blocks(README_TEXT.splitlines())
    out = {}
    for block in blocks:
        first, _, rest = block.body.partition("\n")
        explain = first.startswith("$ kamiwaza policy explain ")
        if block.lang == "console" and explain and first.endswith(" >/dev/null"):
            out[first] = rest
    return out


EXPLAIN_WARNINGS = _explain_examples()


@pytest.mark.integration
@pytest.mark.parametrize("command", sorted(EXPLAIN_WARNINGS))
def test_explain_warnings_are_as_documented(
    command: str, monkeypatch: pytest.MonkeyPatch, opa_bin: str
) -> None:
    import shlex

    monkeypatch.chdir(ROOT)
    args = shlex.split(command.removeprefix("$ kamiwaza policy ").removesuffix(" >/dev/null"))
    run = CliRunner().invoke(kamiwaza_policy, args)
    assert run.exit_code == 0, run.output
    assert run.stderr == EXPLAIN_WARNINGS[command] + "\n"


def _keywords() -> list[str]:
    words = {
        *policy_check.TOP_KEYS,
        *policy_check.RULE_KEYS,
        "default",
        *policy_check.DEFAULT_KEYS,
        *policy_check.TEST_KEYS,
        *policy_check.EXPECT_KEYS,
        *policy_check.INPUT_FIELDS,
        *model.MATCH_FIELDS,
        model.LABEL_PREFIX + "<key>",
        *registry.ENDPOINT_TYPES,
        *registry.COMMON_FIELDS,
        *(name for fields in registry.TYPE_FIELDS.values() for name in fields),
        *registry.AUTH_FIELDS,
        *registry.PRICING_FIELDS,
        *registry.TIMEOUT_FIELDS,
    }
    return sorted(words)


@pytest.mark.parametrize("keyword", _keywords())
def test_every_keyword_is_documented(keyword: str) -> None:
    """A key the translator accepts must be named (in backticks) in the README."""
    assert f"`{keyword}`" in README_TEXT

"""`kamiwaza policy ...`: check, compile, test and explain routing policies.

Exit codes: 0 ok, 1 policy errors or failing tests, 2 usage errors (click's
own, plus a missing OPA binary or an unreadable --input).
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from translator.bundle import SIGNING_ALGORITHMS
from translator.errors import OpaError, PolicyError

EXIT_POLICY = 1
EXIT_USAGE = 2

_endpoints_option = click.option(
    "--endpoints",
    "endpoints",
    type=click.Path(dir_okay=False),
    default=None,
    help="Endpoint registry (default: endpoints.yaml beside the policy).",
)
_rego_option = click.option(
    "--rego",
    "rego_dir",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Hand-written Rego: entry point, guards, overrides (default: ./rego).",
)


_overrides_option = click.option(
    "--overrides",
    "overrides_dirs",
    multiple=True,
    type=click.Path(file_okay=False, exists=True),
    help="An override directory in use, beside --rego (repeatable), e.g. "
    "policies/examples/overrides for the example legal_hold override.",
)


def _in_use(package: str) -> bool:
    """Whether a test package belongs to the policy or an override (`policy test`
    counts those; the entry point's and guards' own tests are the project's)."""
    return package == "data.kamiwaza.policy_test" or package.startswith("data.overrides.")


def _fail_usage(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _compile_or_exit(
    policy: str, endpoints: str | None, classes: dict[str, Any] | None = None
) -> tuple[Any, dict[str, str]]:
    from translator.pipeline import compile_policy

    try:
        result, files = compile_policy(policy, endpoints, classes=classes)
    except PolicyError as err:
        click.echo(err.report, err=True)
        errors = sum(1 for d in err.diagnostics if d.is_error)
        click.echo(f"\n{errors} error(s); nothing was compiled.", err=True)
        sys.exit(EXIT_POLICY)
    if result.diagnostics:
        click.echo(result.render_diagnostics(), err=True)
    return result, files


@click.group("policy")
def policy() -> None:
    """Check, compile, test and explain YAML routing policies."""


def _override_dirs(rego_dir: str | None, overrides_dirs: Sequence[str]) -> list[str]:
    """The override directories in use: `<rego>/overrides` and each --overrides."""
    from translator.opa import default_rego_dir

    if rego_dir is None:
        try:
            rego_dir = default_rego_dir()
        except OpaError:
            rego_dir = None
    dirs = [str(Path(rego_dir) / "overrides")] if rego_dir else []
    return [d for d in (*dirs, *overrides_dirs) if Path(d).is_dir()]


@policy.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@_endpoints_option
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option(
    "--data-classes",
    default=None,
    help="The gateway's data classes, comma-separated (default: --config's, else "
    "public,internal,confidential,pii-restricted).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Gateway config file: its data_classes, rego_dir and overrides_dirs.",
)
@_rego_option
@_overrides_option
def check_cmd(
    *,
    path: str,
    endpoints: str | None,
    strict: bool,
    data_classes: str | None,
    config_file: str | None,
    rego_dir: str | None,
    overrides_dirs: tuple[str, ...],
) -> None:
    """Report every error and warning in the policy at PATH."""
    from translator.lint import GatewayConfig, read_gateway_config
    from translator.pipeline import check

    config = GatewayConfig()
    if config_file is not None:
        try:
            config = read_gateway_config(config_file)
        except ValueError as err:
            _fail_usage(str(err))
    classes = config.data_classes
    if data_classes is not None:
        classes = tuple(c.strip() for c in data_classes.split(",") if c.strip())
    dirs = _override_dirs(rego_dir or config.rego_dir, overrides_dirs or config.overrides_dirs)
    result = check(path, endpoints, data_classes=classes, override_dirs=dirs)
    if result.diagnostics:
        click.echo(result.render_diagnostics(), err=True)
    errors = sum(1 for d in result.diagnostics if d.is_error)
    warnings = len(result.diagnostics) - errors
    if errors or (strict and warnings):
        click.echo(f"\n{errors} error(s), {warnings} warning(s)", err=True)
        sys.exit(EXIT_POLICY)
    ir = result.ir
    assert ir is not None
    default = f", default -> {ir.default.route_to}" if ir.default else ", no default"
    click.echo(
        f"ok: {result.policy_path}: {len(ir.branches)} rule(s){default}, "
        f"{len(ir.tests)} test(s), {warnings} warning(s); revision {ir.revision}"
    )


@policy.command("compile")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False))
@_endpoints_option
def compile_cmd(path: str, out_dir: str, endpoints: str | None) -> None:
    """Compile the policy at PATH to Rego (and its tests) under --out."""
    from translator.pipeline import write_output

    result, files = _compile_or_exit(path, endpoints)
    for written in write_output(files, out_dir):
        click.echo(f"wrote {written}")
    click.echo(f"revision {result.ir.revision}")


@policy.command("bundle")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_file", required=True, type=click.Path(dir_okay=False))
@_endpoints_option
@_rego_option
@_overrides_option
@click.option(
    "--signing-key",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="PEM private key: sign the bundle with `opa sign`.",
)
@click.option(
    "--signing-alg",
    type=click.Choice(SIGNING_ALGORITHMS),
    default="RS256",
    show_default=True,
    help="Signature algorithm (the sidecars' verification key must match).",
)
@click.option(
    "--data-classes",
    default=None,
    help="The gateway's data_classes, lowest first (default: the built-in ones).",
)
@click.option(
    "--in-vpc-data-classes",
    default=None,
    help="The gateway's in_vpc_data_classes (default: the highest class).",
)
def bundle_cmd(
    *,
    path: str,
    out_file: str,
    endpoints: str | None,
    rego_dir: str | None,
    overrides_dirs: tuple[str, ...],
    signing_key: str | None,
    signing_alg: str,
    data_classes: str | None,
    in_vpc_data_classes: str | None,
) -> None:
    """Build an OPA bundle of the policy at PATH (for sidecars in bundle mode)."""
    from translator.bundle import BundleError, Signing, build_bundle, bundle_files
    from translator.classes import DEFAULT_DATA_CLASSES, classes_data
    from translator.opa import default_rego_dir

    order = _names(data_classes) if data_classes else DEFAULT_DATA_CLASSES
    try:
        classes = classes_data(order, _names(in_vpc_data_classes) if in_vpc_data_classes else None)
    except ValueError as err:
        _fail_usage(f"--in-vpc-data-classes: {err}")
    result, files = _compile_or_exit(path, endpoints, classes)
    try:
        rego = rego_dir or default_rego_dir()
        built = build_bundle(
            bundle_files(files, rego, overrides_dirs),
            revision=result.ir.revision,
            policy_source=result.policy_path,
            out=out_file,
            signing=Signing(signing_key, signing_alg) if signing_key else None,
        )
    except OpaError as err:
        _fail_usage(str(err))
    except BundleError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_POLICY)
    signed = ", signed " + signing_alg if built.signed else ", unsigned"
    click.echo(f"wrote {built.path} ({len(built.files)} files{signed})")
    click.echo(f"revision {built.revision}")


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if not names:
        _fail_usage(f"expected a comma-separated list of names, got {raw!r}")
    return names


@policy.command("test")
@click.argument("path", type=click.Path(dir_okay=False))
@_endpoints_option
@_rego_option
@_overrides_option
@click.option("-v", "--verbose", is_flag=True, help="List passing tests too.")
def test_cmd(
    path: str,
    endpoints: str | None,
    rego_dir: str | None,
    overrides_dirs: tuple[str, ...],
    verbose: bool,
) -> None:
    """Compile the policy at PATH and run its tests and those of the overrides in use."""
    from translator.opa import default_rego_dir, run_tests
    from translator.pipeline import write_output

    _, files = _compile_or_exit(path, endpoints)
    with tempfile.TemporaryDirectory(prefix="kamiwaza-policy-") as tmp:
        write_output(files, tmp)
        try:
            outcomes = run_tests([tmp, rego_dir or default_rego_dir(), *overrides_dirs])
        except OpaError as err:
            _fail_usage(str(err))
    outcomes = [o for o in outcomes if _in_use(o.package)]
    failed = [o for o in outcomes if not o.passed]
    for outcome in outcomes:
        if outcome.passed and not verbose:
            continue
        status = "PASS" if outcome.passed else "FAIL"
        click.echo(f"{status} {outcome.package}.{outcome.name}")
        if not outcome.passed:
            if outcome.error:
                click.echo(f"  error: {outcome.error}")
            for line in outcome.output.splitlines():
                click.echo(f"  {line}")
    click.echo(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    if failed:
        sys.exit(EXIT_POLICY)


def _read_input(raw: str) -> tuple[dict[str, Any], str, str]:
    """The input document, its text, and how diagnostics name it."""
    text, source = raw, "--input"
    if not raw.lstrip().startswith(("{", "[")):
        source = raw[1:] if raw.startswith("@") else raw
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        except OSError as err:
            _fail_usage(f"--input: cannot read {source}: {err.strerror}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        _fail_usage(f"--input is not valid JSON: {err}")
    if not isinstance(doc, dict):
        _fail_usage("--input must be a JSON object (the request input document)")
    return doc, text, "<stdin>" if source == "-" else source


@policy.command("explain")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--input",
    "input_arg",
    help="Input document: inline JSON, a file path, @file, or - for stdin.",
)
@click.option(
    "--from-decision-log",
    "log_file",
    type=click.Path(dir_okay=False),
    help="Replay a logged decision: an OPA decision log event (or JSON lines of them).",
)
@click.option("--decision-id", help="With --from-decision-log: the event to replay.")
@_endpoints_option
@_rego_option
@_overrides_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw decision as JSON.")
def explain_cmd(
    *,
    path: str,
    input_arg: str | None,
    log_file: str | None,
    decision_id: str | None,
    endpoints: str | None,
    rego_dir: str | None,
    overrides_dirs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Evaluate the policy at PATH for one input with OPA and explain the decision.

    With --from-decision-log, the input is a logged decision's, and the replay is
    compared with the decision logged (exit 1 when they differ)."""
    from translator.emit import emit_explain
    from translator.explain import render_explanation
    from translator.opa import default_rego_dir, evaluate
    from translator.pipeline import write_output

    if (input_arg is None) == (log_file is None):
        _fail_usage("give one of --input and --from-decision-log")
    logged = None
    if log_file is not None:
        logged = _read_logged(log_file, decision_id)
        input_doc, input_text, input_source = logged.input, json.dumps(logged.input), log_file
    else:
        assert input_arg is not None
        input_doc, input_text, input_source = _read_input(input_arg)
    result, files = _compile_or_exit(path, endpoints)
    with tempfile.TemporaryDirectory(prefix="kamiwaza-policy-") as tmp:
        write_output({**files, **emit_explain(result.ir)}, tmp)
        paths = [tmp, rego_dir or default_rego_dir(), *overrides_dirs]
        # One `opa eval` for both: each run loads and compiles every module again.
        query = '{"decision": data.kamiwaza.route.decision, "trace": data.kamiwaza.policy.explain}'
        try:
            # Undefined only when the decision is (the trace always is defined).
            both = evaluate(paths, query, input_doc) or {"decision": None, "trace": None}
        except OpaError as err:
            _fail_usage(str(err))
    if logged is None:
        _warn_unread(input_doc, input_text, input_source, result.ir, paths[1:])
    if as_json:
        click.echo(json.dumps(both["decision"], indent=2, sort_keys=True))
    else:
        click.echo(render_explanation(both["decision"], both["trace"]))
    if logged is not None:
        _report_replay(logged, both["decision"])


def _read_logged(log_file: str, decision_id: str | None) -> Any:
    from translator.replay import ReplayError, read_logged_decision

    try:
        text = Path(log_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        _fail_usage(f"--from-decision-log: cannot read {log_file}: {err}")
    try:
        return read_logged_decision(text, decision_id)
    except ReplayError as err:
        _fail_usage(f"--from-decision-log {log_file}: {err}")


def _report_replay(logged: Any, replayed: Any) -> None:
    """On stderr: whether the replay gave the logged decision (exit 1 if not)."""
    from translator.replay import differences

    which = f" (decision id {logged.decision_id})" if logged.decision_id else ""
    changed = differences(logged.result, replayed)
    if not changed:
        click.echo(f"replayed: the same decision as logged{which}", err=True)
        return
    click.echo(
        f"replayed: DIFFERENT from the logged decision{which}: {', '.join(changed)}", err=True
    )
    if isinstance(logged.result, dict) and isinstance(replayed, dict):
        for key in changed:
            click.echo(f"  {key}: logged {json.dumps(logged.result.get(key))}", err=True)
            click.echo(f"  {key}: replayed {json.dumps(replayed.get(key))}", err=True)
    sys.exit(EXIT_POLICY)


def _warn_unread(
    input_doc: dict[str, Any], text: str, source: str, ir: Any, rego_dirs: Sequence[str]
) -> None:
    """W005 on stderr for each input field that nothing in the policy reads."""
    from translator.ir import input_path
    from translator.lint import read_paths, rego_files, unread_input_warnings

    conditions = (input_path(c) for b in ir.branches for c in b.conditions)
    reads = read_paths(conditions, rego_files(rego_dirs))
    lines = text.splitlines()
    for diagnostic in unread_input_warnings(input_doc, text, source, reads):
        click.echo(diagnostic.render(lines), err=True)

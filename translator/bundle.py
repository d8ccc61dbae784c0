"""OPA bundles of a routing policy: what `kamiwaza policy bundle` builds.

A bundle holds what the gateway's own sidecar loads from files: the compiled
policy, the hand-written Rego of `rego/` (entry point, guards, overrides; no
tests), and the endpoint registry facts and data classes as data. Its
`.manifest` names the policy revision (the hash the translator computes, which
every decision also carries, so that an audit record names the bundle that
admitted it) and the roots `kamiwaza` and `overrides`: activating the bundle
replaces those trees only. `opa check --bundle --strict` must accept the
staged files before anything is written; with a signing key, `opa sign` adds
`.signatures.json`, which OPA verifies before it activates the bundle.

The archive is deterministic: the same inputs give the same bytes (members
sorted, mtime 0, no owner names, gzip without a timestamp), so rebuilding an
unchanged policy publishes an identical object.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from translator.emit import DATA_FILE, POLICY_FILE
from translator.errors import OpaError
from translator.opa import find_opa

BUNDLE_ROOTS = ("kamiwaza", "overrides")
MANIFEST = ".manifest"
SIGNATURES = ".signatures.json"
# Asymmetric only: the verification key is public and can sit in a ConfigMap; an
# HMAC secret would have to be on every replica and on the signer's command line.
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")


class BundleError(Exception):
    """The bundle cannot be built; the message says why (OPA's own words included)."""


@dataclass(frozen=True, slots=True)
class Signing:
    """How `opa sign` signs: a PEM private key file and its algorithm."""

    key_file: str
    algorithm: str = "RS256"

    def __post_init__(self) -> None:
        if self.algorithm not in SIGNING_ALGORITHMS:
            known = ", ".join(SIGNING_ALGORITHMS)
            raise BundleError(f"signing algorithm {self.algorithm!r} is not one of {known}")


@dataclass(frozen=True, slots=True)
class Bundle:
    path: Path
    revision: str
    files: tuple[str, ...]  # members, sorted; .manifest and .signatures.json included
    signed: bool


def bundle_files(
    compiled: Mapping[str, str],
    rego_dir: str | Path,
    overrides_dirs: Sequence[str | Path] = (),
) -> dict[str, str]:
    """The bundle's policy and data files, by path inside the bundle.

    `compiled` is what :func:`translator.pipeline.compile_policy` emits; the
    Rego of `rego_dir` keeps its paths, that of each override directory goes
    under `overrides/`. The compiled tests and the `_test.rego` files are left
    out (they are run before publishing, not shipped to every replica)."""
    data = json.loads(compiled[DATA_FILE])
    files = {
        POLICY_FILE: compiled[POLICY_FILE],
        # Under the root it belongs to, so that the manifest's roots admit it.
        "kamiwaza/data.json": json.dumps(data["kamiwaza"], indent=2, sort_keys=True) + "\n",
    }
    sources = [(Path(rego_dir), ""), *((Path(d), "overrides/") for d in overrides_dirs)]
    for root, prefix in sources:
        for path in sorted(root.rglob("*.rego")):
            if path.name.endswith("_test.rego"):
                continue
            rel = prefix + path.relative_to(root).as_posix()
            if rel in files:
                raise BundleError(f"{path}: another file of the bundle is already {rel}")
            files[rel] = path.read_text(encoding="utf-8")
    return files


def manifest(revision: str, policy_source: str) -> str:
    doc = {
        "revision": revision,
        "roots": list(BUNDLE_ROOTS),
        "rego_version": 1,
        "metadata": {"built_by": "kamiwaza policy bundle", "policy": policy_source},
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def build_bundle(
    files: Mapping[str, str],
    *,
    revision: str,
    policy_source: str,
    out: str | Path,
    signing: Signing | None = None,
) -> Bundle:
    """Check, sign (optionally) and archive `files` as a bundle at `out`."""
    with tempfile.TemporaryDirectory(prefix="kamiwaza-bundle-") as tmp:
        stage = Path(tmp) / "bundle"
        members = {**files, MANIFEST: manifest(revision, policy_source)}
        for rel, text in members.items():
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        # Run in the staging directory so that OPA names files as the bundle does.
        _opa(["check", "--bundle", "--strict", "."], cwd=stage, what="the bundle does not check")
        if signing is not None:
            key = os.path.abspath(signing.key_file)
            if not os.path.isfile(key):
                raise BundleError(f"signing key {signing.key_file}: no such file")
            _opa(
                [
                    "sign",
                    "--bundle",
                    ".",
                    "--signing-key",
                    key,
                    "--signing-alg",
                    signing.algorithm,
                    "--output-file-path",
                    ".",
                ],
                cwd=stage,
                what="opa sign failed",
            )
            members[SIGNATURES] = (stage / SIGNATURES).read_text(encoding="utf-8")
        target = Path(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(archive(members))
        partial.replace(target)
    return Bundle(target, revision, tuple(sorted(members)), signing is not None)


def archive(members: Mapping[str, str]) -> bytes:
    """A gzip tar of `members`, the same bytes for the same members."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(members):
            data = members[rel].encode("utf-8")
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _opa(args: list[str], *, cwd: Path, what: str) -> None:
    opa = find_opa()  # OpaError (with how to get OPA) when it is missing
    try:
        proc = subprocess.run(
            [opa, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise OpaError(f"running opa {args[0]} failed: {err}") from err
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise BundleError(f"{what}:\n{detail}")

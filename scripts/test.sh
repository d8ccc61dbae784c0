#!/usr/bin/env bash
# Every check CI runs, in order of speed. Called by `make test` (after set-up)
# and therefore by .ci/run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=.venv/bin
OPA="${KAMIWAZA_OPA_BIN:-.tools/bin/opa}"
export KAMIWAZA_OPA_BIN="$(cd "$(dirname "$OPA")" && pwd)/$(basename "$OPA")"
BUILD=build/ci-policy
# The example override is opt-in for a gateway, but always checked and tested here.
EXAMPLES=policies/examples/overrides

step() { printf '\n==> %s\n' "$*"; }

step "ruff"
"$BIN/ruff" check .
"$BIN/ruff" format --check .

step "mypy"
"$BIN/mypy"

step "compile the example policy"
rm -rf "$BUILD"
"$BIN/kamiwaza" policy compile policies/routing.yaml -o "$BUILD"

step "the demo policy's tests (make run)"
"$BIN/kamiwaza" policy test policies/demo/routing.yaml

step "opa fmt"
"$KAMIWAZA_OPA_BIN" fmt --fail --list rego "$EXAMPLES" "$BUILD"

step "opa check --strict"
"$KAMIWAZA_OPA_BIN" check --strict rego "$EXAMPLES" "$BUILD"

step "opa test (with coverage)"
"$KAMIWAZA_OPA_BIN" test rego "$EXAMPLES" "$BUILD"
"$KAMIWAZA_OPA_BIN" test --coverage --format json rego "$EXAMPLES" "$BUILD" > build/coverage.json
"$BIN/python" scripts/coverage_report.py build/coverage.json --threshold 90

step "pytest"
"$BIN/pytest" "$@"

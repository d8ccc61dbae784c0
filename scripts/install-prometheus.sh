#!/usr/bin/env bash
# Installs the pinned Prometheus server into .tools/bin, idempotently; the
# metrics integration test runs it with its OTLP receiver on loopback.
#
# Order of preference: a `prometheus` already in .tools/bin built from the
# pinned module version (checked with `go version -m`); otherwise `go install`
# from the Go module proxy (a few minutes on first run; Go's module and build
# caches make a rebuild quick). Prints the path of the binary on success.
#
# Prometheus 3.x is published as Go module version v0.3XX.Y: v0.316.0 is
# Prometheus 3.16.0 (docker-compose.yml pins the same release's image).
set -euo pipefail

PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
MODULE="github.com/prometheus/prometheus"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bindir="$root/.tools/bin"
target="$bindir/prometheus"

built_version() {
    # `go version -m` prints "	mod	github.com/prometheus/prometheus	v0.316.0	h1:..."
    go version -m "$1" 2>/dev/null | awk -v m="$MODULE" '$1 == "mod" && $2 == m {print $3; exit}'
}

if ! command -v go >/dev/null 2>&1; then
    if [ -x "$target" ]; then
        echo "$target"  # cannot check its version without Go; trust it
        exit 0
    fi
    cat >&2 <<MSG
install-prometheus: Prometheus is not installed and Go is not available to build it.
Install Go (https://go.dev/doc/install) and run this script again, or place a
Prometheus 3.x binary at $target (or set KAMIWAZA_PROMETHEUS_BIN to its path).
MSG
    exit 1
fi

if [ -x "$target" ] && [ "$(built_version "$target")" = "$PROMETHEUS_VERSION" ]; then
    echo "$target"
    exit 0
fi

mkdir -p "$bindir"
echo "install-prometheus: building Prometheus $PROMETHEUS_VERSION with go install (first time only, about 5 minutes)" >&2
# Build into a scratch GOBIN and move into place, so that an interrupted build
# never leaves a half-written binary behind. -buildvcs=false: the checkout may
# not be a complete git repository.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
GOBIN="$scratch" GOFLAGS="${GOFLAGS:--buildvcs=false}" \
    go install -ldflags "-X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION}" \
    "$MODULE/cmd/prometheus@$PROMETHEUS_VERSION" >&2
got="$(built_version "$scratch/prometheus")"
if [ "$got" != "$PROMETHEUS_VERSION" ]; then
    echo "install-prometheus: built binary reports module version '$got', expected $PROMETHEUS_VERSION" >&2
    exit 1
fi
mv -f "$scratch/prometheus" "$target"
echo "$target"

#!/usr/bin/env bash
# Installs the pinned Helm into .tools/bin, idempotently; the chart tests run
# `helm lint` and `helm template` on deploy/helm/kamiwaza.
#
# Order of preference: a `helm` already in .tools/bin built from the pinned
# module version (checked with `go version -m`); otherwise `go install` from
# the Go module proxy (a few minutes on first run; Go's caches make a rebuild
# quick). Prints the path of the binary on success.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
MODULE="helm.sh/helm/v3"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bindir="$root/.tools/bin"
target="$bindir/helm"

built_version() {
    # `go version -m` prints "	mod	helm.sh/helm/v3	v3.22.0	h1:..."
    go version -m "$1" 2>/dev/null | awk -v m="$MODULE" '$1 == "mod" && $2 == m {print $3; exit}'
}

if ! command -v go >/dev/null 2>&1; then
    if [ -x "$target" ]; then
        echo "$target"  # cannot check its version without Go; trust it
        exit 0
    fi
    cat >&2 <<MSG
install-helm: Helm is not installed and Go is not available to build it.
Install Go (https://go.dev/doc/install) and run this script again, or place a
Helm $HELM_VERSION binary at $target (or set KAMIWAZA_HELM_BIN to its path).
MSG
    exit 1
fi

if [ -x "$target" ] && [ "$(built_version "$target")" = "$HELM_VERSION" ]; then
    echo "$target"
    exit 0
fi

mkdir -p "$bindir"
echo "install-helm: building Helm $HELM_VERSION with go install (first run only, a few minutes)" >&2
# A scratch GOBIN, moved into place: an interrupted build leaves no half-written
# binary. The version is stamped as Helm's own release build does.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
GOBIN="$scratch" GOFLAGS="${GOFLAGS:--buildvcs=false}" \
    go install -ldflags "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
    "$MODULE/cmd/helm@$HELM_VERSION" >&2
got="$(built_version "$scratch/helm")"
if [ "$got" != "$HELM_VERSION" ]; then
    echo "install-helm: built binary reports module version '$got', expected $HELM_VERSION" >&2
    exit 1
fi
mv -f "$scratch/helm" "$target"
echo "$target"

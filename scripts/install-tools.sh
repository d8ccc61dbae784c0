#!/usr/bin/env bash
# Installs the pinned test tools into .tools/bin, idempotently:
#   fake-gcs-server  the GCS emulator the audit sink's integration tests run against
# (moto's S3 server comes with the Python dev dependencies.) Prints the paths.
set -euo pipefail

FAKE_GCS_VERSION="${FAKE_GCS_VERSION:-v1.56.1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bindir="$root/.tools/bin"

module_version() {
    # `go version -m` names the main module and its version in the binary.
    go version -m "$1" 2>/dev/null | awk '$1 == "mod" {print $3; exit}'
}

install_go_tool() {
    local name="$1" module="$2" version="$3"
    local target="$bindir/$name"
    if [ -x "$target" ] && command -v go >/dev/null 2>&1 \
        && [ "$(module_version "$target")" = "$version" ]; then
        echo "$target"
        return 0
    fi
    if ! command -v go >/dev/null 2>&1; then
        if [ -x "$target" ]; then
            echo "$target"  # cannot check its version without Go; use it
            return 0
        fi
        echo "install-tools: $name $version is not installed and Go is not available to build it" >&2
        echo "(install Go, or put $name on PATH / set KAMIWAZA_FAKE_GCS_BIN)" >&2
        return 1
    fi
    mkdir -p "$bindir"
    echo "install-tools: building $name $version with go install (first time only, about a minute)" >&2
    GOBIN="$bindir" GOFLAGS="${GOFLAGS:--buildvcs=false}" go install "$module@$version" >&2
    got="$(module_version "$target")"
    if [ "$got" != "$version" ]; then
        echo "install-tools: built $name reports version '$got', expected $version" >&2
        return 1
    fi
    echo "$target"
}

install_go_tool fake-gcs-server github.com/fsouza/fake-gcs-server "$FAKE_GCS_VERSION"

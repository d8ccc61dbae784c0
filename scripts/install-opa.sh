#!/usr/bin/env bash
# Installs the pinned OPA binary into .tools/bin, idempotently.
#
# Order of preference: an `opa` already in .tools/bin or on PATH at the pinned
# version; otherwise `go install` from the Go module proxy. Prints the path of
# the binary on success.
set -euo pipefail

OPA_VERSION="${OPA_VERSION:-v1.22.2}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bindir="$root/.tools/bin"

version_of() {
    # `opa version` prints "Version: 1.22.2" on its first line.
    "$1" version 2>/dev/null | awk '/^Version:/ {print "v"$2; exit}'
}

for candidate in "$bindir/opa" "$(command -v opa 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && [ "$(version_of "$candidate")" = "$OPA_VERSION" ]; then
        echo "$candidate"
        exit 0
    fi
done

if ! command -v go >/dev/null 2>&1; then
    cat >&2 <<MSG
install-opa: OPA $OPA_VERSION is not installed and Go is not available to build it.
Either install Go (https://go.dev/doc/install) and run this script again, or
download the OPA $OPA_VERSION binary for your platform from
https://github.com/open-policy-agent/opa/releases/tag/$OPA_VERSION,
place it at $bindir/opa (chmod +x), or set KAMIWAZA_OPA_BIN to its path.
MSG
    exit 1
fi

mkdir -p "$bindir"
echo "install-opa: building OPA $OPA_VERSION with go install (first time only, about 3 minutes)" >&2
# -buildvcs=false: the project checkout may not be a complete git repository.
GOBIN="$bindir" GOFLAGS="${GOFLAGS:--buildvcs=false}" \
    go install "github.com/open-policy-agent/opa@$OPA_VERSION" >&2
got="$(version_of "$bindir/opa")"
if [ "$got" != "$OPA_VERSION" ]; then
    echo "install-opa: built binary reports version '$got', expected $OPA_VERSION" >&2
    exit 1
fi
echo "$bindir/opa"

#!/usr/bin/env bash
# Installs Debian's redis-server for the limiter's integration tests (tests/redis_server.py
# starts it on a free loopback port; the system service is never used). A no-op when
# redis-server is already on PATH. Needs root (or sudo) and Debian's package archive.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    command -v redis-server
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-redis: redis-server is not installed and this user cannot apt-get install it" >&2
    echo "(install Debian's redis-server package, or put redis-server on PATH)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a fresh machine: update once, then retry.
if ! "${SUDO[@]}" apt-get install -y --no-install-recommends redis-server >&2; then
    "${SUDO[@]}" apt-get update >&2
    "${SUDO[@]}" apt-get install -y --no-install-recommends redis-server >&2
fi
# The package starts a system service on Debian; the tests start their own servers.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    "${SUDO[@]}" systemctl stop redis-server >&2 || true
fi
command -v redis-server

#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver (/usr/bin/chromium,
# /usr/bin/chromedriver) for the console's browser test, idempotently: a no-op
# when both are installed. Selenium drives them; no browser is ever downloaded.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    cat >&2 <<MSG
install-chromium: Chromium and ChromeDriver are not installed and apt-get is not available.
Install your platform's chromium and chromedriver packages (the browser test
looks for /usr/bin/chromium and /usr/bin/chromedriver, or KAMIWAZA_CHROMIUM_BIN
and KAMIWAZA_CHROMEDRIVER_BIN).
MSG
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "install-chromium: installing Debian's chromium and chromium-driver with apt-get (first time only, about a minute)" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a fresh machine: update once if
# the packages cannot be found.
if ! apt-cache show chromium chromium-driver >/dev/null 2>&1; then
    $sudo apt-get update -qq >&2
fi
if ! $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2; then
    $sudo apt-get update -qq >&2
    $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
fi

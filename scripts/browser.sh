#!/usr/bin/env bash
# Debian's Chromium for the console's browser tests (tests/console, Playwright drives it:
# `playwright install` cannot download browsers here). Idempotent: skips when installed.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version

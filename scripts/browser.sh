#!/usr/bin/env bash
# Debian's Chromium for the console's browser tests (tests/console; Playwright drives it, since
# `playwright install` cannot download browsers here), and a CJK font so the Chinese pages render
# in the screenshots. Idempotent: skips what is installed.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -d /usr/share/fonts/truetype/wqy ] || need+=(fonts-wqy-zenhei)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
/usr/bin/chromium --version 2>/dev/null | grep -q Chromium || { echo "chromium does not run" >&2; exit 1; }

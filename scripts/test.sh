#!/usr/bin/env bash
# One command: install everything the tests need and run them (the same command CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test bash scripts/install.sh
bash scripts/services.sh
if ! command -v claude >/dev/null 2>&1 || ! command -v opencode >/dev/null 2>&1; then
  npm install -g --silent @anthropic-ai/claude-code opencode-ai >/dev/null 2>&1 \
    || echo "warning: could not install the agent CLIs; their tests will be skipped" >&2
fi
if ! codex --version 2>/dev/null | grep -q "0\.169\.0"; then  # pinned: the Responses e2e tests expect this version
  npm install -g --silent @openai/codex@0.169.0 >/dev/null 2>&1 \
    || echo "warning: could not install the Codex CLI; its tests will be skipped" >&2
fi
.venv/bin/ruff check stepplan tests bench
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

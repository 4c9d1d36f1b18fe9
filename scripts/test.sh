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
.venv/bin/mypy  # the type checker over stepplan/ ([tool.mypy] in pyproject.toml)
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
# The date-dependent tests again, on a clock pinned at each date of tests/clock.py CALENDAR_DATES
# (month lengths, leap day, last days of months): proof that CI passes on any date.
if [ $# -eq 0 ]; then
  for d in $(.venv/bin/python -c 'from tests.clock import CALENDAR_DATES; print(*CALENDAR_DATES)'); do
    echo "calendar tests at $d"
    STEPPLAN_TEST_DATE="$d" .venv/bin/python -m pytest -q -p no:cacheprovider -m calendar tests/billing
  done
fi

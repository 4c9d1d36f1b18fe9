#!/usr/bin/env bash
# One command: install everything the tests need and run them (the same command CI runs).
# With arguments, they go to one pytest run as they are; without, the suite runs in two parts:
# everything but tests/agents (STEPPLAN_TEST_WORKERS processes, default 2, one test file per worker
# at a time), then the agent CLIs in parallel (STEPPLAN_AGENT_WORKERS, default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test bash scripts/install.sh
bash scripts/services.sh
bash scripts/browser.sh  # Debian's Chromium for the console's browser tests (tests/console)
bash scripts/agents.sh   # the pinned agent CLIs (docs/agents.md), Codex included, cached between runs
.venv/bin/ruff check stepplan tests bench
.venv/bin/mypy  # the type checker over stepplan/ ([tool.mypy] in pyproject.toml)
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
fi
rc=0
# Every test has its own gateway, port and database (PostgreSQL: a fresh database per test), so files
# run side by side; a file stays on one worker (its module fixtures are shared within it).
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${STEPPLAN_TEST_WORKERS:-2}" --dist loadfile --durations=15 \
  --ignore=tests/agents || rc=$?
# Each agent's file runs in one worker (an agent never runs beside itself); every worker has its
# own fake upstream and gateways (session fixtures are per worker).
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${STEPPLAN_AGENT_WORKERS:-3}" --dist loadfile tests/agents \
  || rc=$?
# The date-dependent tests again, on a clock pinned at each date of tests/clock.py CALENDAR_DATES
# (month lengths, leap day, last days of months): proof that CI passes on any date.
for d in $(.venv/bin/python -c 'from tests.clock import CALENDAR_DATES; print(*CALENDAR_DATES)'); do
  echo "calendar tests at $d"
  STEPPLAN_TEST_DATE="$d" .venv/bin/python -m pytest -q -p no:cacheprovider -m calendar tests/billing || rc=$?
done
exit "$rc"

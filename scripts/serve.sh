#!/usr/bin/env bash
# One command: install stepplan and start it on its embedded defaults (SQLite in ./stepplan.db,
# the embedded SmolLM2 model serving every model name). On first run it creates a demo account
# with a Flash Max subscription and writes an API key to ./stepplan-demo-key.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
SP=.venv/bin/stepplan
if [ ! -s stepplan-demo-key.txt ]; then
  $SP accounts create demo >/dev/null 2>&1 || true
  $SP subscribe demo --plan flash-max >/dev/null 2>&1 || true
  $SP keys create --account demo --name demo --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["key"])' > stepplan-demo-key.txt
fi
echo "demo API key (also in stepplan-demo-key.txt): $(cat stepplan-demo-key.txt)" >&2
exec $SP serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"

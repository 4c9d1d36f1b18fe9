#!/usr/bin/env bash
# Create a separate venv with the LiteLLM proxy for the side-by-side benchmark.
#
#   bench/litellm_setup.sh [VENV_DIR]      (default: bench/.litellm-venv, or $LITELLM_VENV)
#
# Idempotent: a finished install leaves a marker file and is not redone.
# Environment: PYTHON (interpreter used to create the venv, default python3),
# LITELLM_SPEC (pip requirement, default 'litellm[proxy]').
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-${LITELLM_VENV:-$here/.litellm-venv}}"
python="${PYTHON:-python3}"
spec="${LITELLM_SPEC:-litellm[proxy]}"
marker="$venv/.bench-litellm-installed"

version() {
  "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))'
}

if [[ -f "$marker" && -x "$venv/bin/litellm" ]] && [[ "$(cat "$marker")" == "$spec" ]]; then
  echo "litellm $(version) already installed in $venv"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  echo "creating venv $venv"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
echo "installing $spec into $venv (takes ~30 s, ~750 MB)"
"$venv/bin/python" -m pip install -q "$spec"
test -x "$venv/bin/litellm"
printf '%s' "$spec" > "$marker"
echo "litellm $(version) installed in $venv"

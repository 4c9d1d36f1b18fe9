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
if ! .venv/bin/python -c 'import llama_cpp' 2>/dev/null; then
  # A portable build (AVX2/FMA/F16C) instead of -march=native: a native build on a CPU that
  # reports AMX uses AMX tiles, which crash with a protection fault on VMs that do not grant
  # them. Built without pip's wheel cache so a native wheel cached earlier is not reused.
  CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"} \
    .venv/bin/pip install -q --no-cache-dir "llama-cpp-python>=0.3.7" 2>&1 | grep -v "is ignored" || true
fi
.venv/bin/pip install -q -e ".[local${EXTRAS:+,$EXTRAS}]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c 'import stepplan, llama_cpp' || { echo "install failed" >&2; exit 1; }
# The embedded model must generate on this CPU (a crash here would take the gateway down).
.venv/bin/python scripts/check_local_model.py || { echo "the embedded model does not run on this machine" >&2; exit 1; }

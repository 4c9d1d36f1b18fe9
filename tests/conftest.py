"""Shared fixtures: a fake upstream (real HTTP server) and the real gateway process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests import clock as test_clock
from tests.fakes.upstream import FakeUpstream, free_port

ROOT = Path(__file__).resolve().parent.parent
STEPPLAN = [sys.executable, "-m", "stepplan"]


@dataclass
class Gateway:
    port: int
    config: Path
    workdir: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base(self) -> str:
        return f"{self.url}/step_plan/v1"

    @property
    def anthropic_base(self) -> str:
        return f"{self.url}/step_plan"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*STEPPLAN, "--config", str(self.config), *args], capture_output=True, text=True,
                             env=self.env, cwd=self.workdir, timeout=120)
        if check and out.returncode != 0:
            raise AssertionError(f"stepplan {' '.join(args)} failed: {out.stdout}\n{out.stderr}")
        return out

    def new_key(self, account: str, *, plan: str | None = "flash-max") -> str:
        """Create (once) an account with a subscription and return a fresh key for it."""
        if account not in self.keys:
            self.cli("accounts", "create", account)
            if plan and billing_enabled(self):
                self.cli("subscribe", account, "--plan", plan)
        key = json.loads(self.cli("keys", "create", "--account", account, "--json").stdout)["key"]
        self.keys[account] = key
        return key

    def start(self, workers: int = 1, extra_args: tuple[str, ...] = ()) -> None:
        log = open(self.workdir / f"gateway-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*STEPPLAN, "serve", "--config", str(self.config), "--port", str(self.port), "--workers", str(workers),
             *extra_args], env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_healthy(self.url, self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def log_text(self) -> str:
        p = self.workdir / f"gateway-{self.port}.log"
        return p.read_text(errors="replace") if p.exists() else ""


def billing_enabled(gw: Gateway) -> bool:
    text = gw.config.read_text()
    return "enabled = false" not in text


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway at {url} did not become healthy")


def write_config(path: Path, fake: FakeUpstream, *, db_url: str, extra: str = "") -> None:
    path.write_text(f"""
[database]
url = "{db_url}"

[server]
default_upstream = "fake"

[upstreams.fake]
protocol = "openai"
base_url = "{fake.base_url}"
api_key = "upstream-secret"
max_retries = 1
first_byte_timeout = 5
idle_timeout = 5

[upstreams.fake_anthropic]
protocol = "anthropic"
base_url = "{fake.base_url}"
api_key = "upstream-secret"
max_retries = 1
first_byte_timeout = 5
idle_timeout = 5
{extra}
""")


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeUpstream]:
    f = FakeUpstream().start()
    yield f
    f.stop()


def make_gateway(tmp: Path, fake: FakeUpstream, *, db_url: str | None = None, extra: str = "",
                 env: dict[str, str] | None = None) -> Gateway:
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "stepplan.toml"
    if os.environ.get("STEPPLAN_TEST_BILLING") == "0":  # run the protocol tests without metering
        extra += "\n[billing]\nenabled = false\n"
    write_config(config, fake, db_url=db_url or f"sqlite:///{tmp}/stepplan.db", extra=extra)
    # the machine's *_proxy variables would send the gateway's calls to the fakes through a proxy
    e = {k: v for k, v in os.environ.items() if not k.startswith("STEPPLAN_") and not k.lower().endswith("_proxy")}
    e["PYTHONPATH"] = str(ROOT)
    e.update(test_clock.gateway_env())  # STEPPLAN_TEST_DATE (tests/clock.py)
    e.update(env or {})
    return Gateway(port=free_port(), config=config, workdir=tmp, env=e)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("gw"), fake)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def key(gateway: Gateway) -> str:
    return gateway.new_key("tester")


@pytest.fixture(autouse=True)
def _reset_fake(fake: FakeUpstream) -> None:
    fake.reset()

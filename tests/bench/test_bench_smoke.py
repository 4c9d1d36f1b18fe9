"""Smoke test of the benchmark tools: fake upstream, pass-through, sse_load.py, open_streams.py.

Starts real processes on free 127.0.0.1 ports, runs each load tool for about a
second and checks that the numbers are sane. It does not assert any speed.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
PY = sys.executable
OPENAI_BODY = {"model": "step-3.5-flash", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
ANTHROPIC_BODY = {"model": "step-3.5-flash", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
CHUNKS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(port: int, path: str, body: dict | None = None, method: str = "POST") -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read()
    finally:
        conn.close()


class Server:
    def __init__(self, args: list[str], port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [PY, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited: {self.proc.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
            try:
                if _request(port, "/healthz", method="GET")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{args[0]} did not become healthy")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def bench_fake() -> Iterator[Server]:
    port = _free_port()
    s = Server([str(BENCH / "fake_upstream.py"), "--port", str(port), "--chunks", str(CHUNKS)], port)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def bench_passthrough(bench_fake: Server) -> Iterator[Server]:
    port = _free_port()
    args = [str(BENCH / "passthrough.py"), "--upstream", f"http://127.0.0.1:{bench_fake.port}", "--port", str(port)]
    s = Server(args, port)
    yield s
    s.stop()


def _sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        events.append((name, "\n".join(data)))
    return events


def test_fake_openai_sse_with_usage_is_well_formed(bench_fake: Server) -> None:
    body = {**OPENAI_BODY, "stream": True, "stream_options": {"include_usage": True}}
    status, ctype, raw = _request(bench_fake.port, "/v1/chat/completions", body)
    assert status == 200 and ctype.startswith("text/event-stream")
    assert raw.endswith(b"data: [DONE]\n\n")
    events = [json.loads(d) for _, d in _sse_events(raw)[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "".join(f"tok{i} " for i in range(CHUNKS))
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == []
    assert events[-1]["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": CHUNKS,
        "total_tokens": 12 + CHUNKS,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_fake_openai_sse_without_usage_has_no_usage_chunk(bench_fake: Server) -> None:
    status, _, raw = _request(bench_fake.port, "/v1/chat/completions", {**OPENAI_BODY, "stream": True})
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in raw


def test_fake_openai_json(bench_fake: Server) -> None:
    status, ctype, raw = _request(bench_fake.port, "/v1/chat/completions", OPENAI_BODY)
    assert status == 200 and ctype.startswith("application/json")
    obj = json.loads(raw)
    assert obj["model"] == "step-3.5-flash"
    assert obj["usage"]["completion_tokens"] == CHUNKS


def test_fake_anthropic_sse_event_sequence(bench_fake: Server) -> None:
    status, _, raw = _request(bench_fake.port, "/v1/messages", {**ANTHROPIC_BODY, "stream": True})
    assert status == 200
    names = [n for n, _ in _sse_events(raw)]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * CHUNKS,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    data = {n: json.loads(d) for n, d in _sse_events(raw)}
    assert data["message_start"]["message"]["usage"]["input_tokens"] == 12
    assert data["message_delta"]["usage"]["output_tokens"] == CHUNKS
    assert data["message_delta"]["delta"]["stop_reason"] == "end_turn"


def test_fake_models(bench_fake: Server) -> None:
    status, _, raw = _request(bench_fake.port, "/v1/models", method="GET")
    assert status == 200
    assert "step-3.5-flash" in [m["id"] for m in json.loads(raw)["data"]]


def _load(url: str, body: dict, conc: int = 4) -> dict:
    cmd = [PY, str(BENCH / "sse_load.py"), url, "-c", str(conc), "-d", "1", "--body", json.dumps(body)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _check_sane(res: dict, sse: bool) -> None:
    assert res["errors"] == 0, res["error_kinds"]
    assert res["requests"] > 0 and res["req_per_s"] > 0
    lat = res["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    if sse:
        ttft = res["ttft_ms"]
        assert 0 < ttft["p50"] <= ttft["p99"]
        assert ttft["p50"] <= lat["p50"] and ttft["max"] <= lat["max"]
    else:
        assert res["ttft_ms"] is None


@pytest.mark.parametrize("target", ["bench_fake", "bench_passthrough"])
@pytest.mark.parametrize(
    ("path", "body", "sse"),
    [
        ("/v1/chat/completions", OPENAI_BODY, False),
        ("/v1/chat/completions", {**OPENAI_BODY, "stream": True, "stream_options": {"include_usage": True}}, True),
        ("/v1/messages", {**ANTHROPIC_BODY, "stream": True}, True),
    ],
    ids=["openai_json", "openai_sse", "anthropic_sse"],
)
def test_sse_load_numbers_are_sane(request: pytest.FixtureRequest, target: str, path: str, body: dict, sse: bool):
    server: Server = request.getfixturevalue(target)
    res = _load(f"http://127.0.0.1:{server.port}{path}", body)
    assert res["mode"] == ("sse" if sse else "plain")
    _check_sane(res, sse)


def test_passthrough_streams_bytes_unchanged(bench_fake: Server, bench_passthrough: Server) -> None:
    body = {**OPENAI_BODY, "stream": True, "stream_options": {"include_usage": True}}
    direct = _request(bench_fake.port, "/v1/chat/completions", body)
    proxied = _request(bench_passthrough.port, "/v1/chat/completions", body)
    assert direct[0] == proxied[0] == 200
    assert direct[2] == proxied[2]


def test_sse_load_refuses_remote_targets() -> None:
    cmd = [PY, str(BENCH / "sse_load.py"), "http://example.com/v1/chat/completions", "-d", "1", "--body", "{}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "127.0.0.1" in r.stderr


def test_open_streams_holds_slow_streams() -> None:
    up_port, pt_port = _free_port(), _free_port()
    slow = Server(
        [str(BENCH / "fake_upstream.py"), "--port", str(up_port), "--chunks", "20", "--chunk-delay-ms", "500"], up_port
    )
    try:
        args = [str(BENCH / "passthrough.py"), "--upstream", f"http://127.0.0.1:{up_port}", "--port", str(pt_port)]
        pt = Server(args, pt_port)
        try:
            body = json.dumps({**OPENAI_BODY, "stream": True})
            cmd = [PY, str(BENCH / "open_streams.py"), f"http://127.0.0.1:{pt_port}/v1/chat/completions"]
            cmd += ["-n", "20", "--batch", "10", "--hold", "0.5", "--pid", str(pt.proc.pid), "--body", body]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            res = json.loads(r.stdout)
        finally:
            pt.stop()
    finally:
        slow.stop()
    assert res["errors"] == 0, res["error_kinds"]
    assert res["established"] == res["held_at_end_of_hold"] == 20
    assert res["rss_peak_mb"] >= res["rss_before_mb"] > 0


def test_ab_compares_two_trees_side_by_side(tmp_path: Path) -> None:
    """bench/ab.py end to end on the same tree twice (one short round of JSON and an OpenAI stream):
    both sides serve, CPU per call is measured for each, and their ratio is near 1."""
    out = tmp_path / "ab.json"
    cmd = [PY, str(BENCH / "ab.py"), "--a", f"a={BENCH.parent}", "--b", f"b={BENCH.parent}", "--scenarios",
           "openai_json,openai_sse", "--rounds", "1", "--duration", "1", "--concurrency", "4",
           "--json-out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert {x["scenario"] for x in result["rounds"]} == {"openai_json", "openai_sse"}
    for x in result["rounds"]:
        for side in ("a", "b"):
            assert x[side]["requests"] > 0 and x[side]["errors"] == 0 and x[side]["cpu_ms_per_req"] > 0
    for ratio in result["median_ratio"].values():  # the same tree on both sides: a loose bound (1 s runs)
        assert 0.5 < ratio < 2.0

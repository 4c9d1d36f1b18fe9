"""step-router-v1 through the running gateway: field rules, routing, stickiness, fallback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ROOT, Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream, openai_completion

HARD = ("Prove that for every integer n > 1 the sum of the reciprocals of the first n primes is unbounded, "
        "then write a Python function that computes the minimal n such that the sum exceeds 3, derive its "
        "asymptotic complexity, and explain step by step why the sieve bound you chose is sufficient.")
EASY = "hi"


def _scores() -> tuple[float, float]:
    from stepplan.routing.policy import RouteInput
    from stepplan.routing.scorer import RouterScorer

    s = RouterScorer()
    return (s.score(RouteInput(turns=[("user", HARD)])), s.score(RouteInput(turns=[("user", EASY)])))


def _gateway(tmp: Path, fake: FakeUpstream, threshold: float) -> Gateway:
    gw = make_gateway(tmp, fake, extra=f"[router]\nthreshold = {threshold}\nsticky_seconds = 600\n")
    gw.start()
    return gw


@pytest.fixture(scope="module")
def split_gateway(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Gateway]:
    hard, easy = _scores()
    assert hard > easy, "a long multi-step proof+code task must score above 'hi'"
    gw = _gateway(tmp_path_factory.mktemp("router"), fake, (hard + easy) / 2)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def rkey(split_gateway: Gateway) -> str:
    return split_gateway.new_key("router-user")


def client(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0)


def routed(gw: Gateway, key: str, messages: list[dict], headers: dict[str, str] | None = None,
           stream: bool = False) -> httpx.Response:
    r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}", **(headers or {})},
                   json={"model": "step-router-v1", "messages": messages, "stream": stream}, timeout=30)
    assert r.status_code == 200, r.text
    return r


# ------------------------------------------------------------------ field rules
def test_field_rule_engine_model_cannot_be_requested(split_gateway: Gateway, rkey: str) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client(split_gateway, rkey).chat.completions.create(model="deepseek-v4-pro",
                                                             messages=[{"role": "user", "content": EASY}])
    assert ei.value.response.json()["error"]["code"] == "request_params_invalid"


def test_field_rule_max_tokens_cap(split_gateway: Gateway, rkey: str, fake: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client(split_gateway, rkey).chat.completions.create(
            model="step-router-v1", messages=[{"role": "user", "content": EASY}], max_tokens=250_001)
    err = ei.value.response.json()["error"]
    assert err["code"] == "request_params_invalid" and "250000" in err["message"] and err["param"] == "max_tokens"
    client(split_gateway, rkey).chat.completions.create(
        model="step-router-v1", messages=[{"role": "user", "content": EASY}], max_tokens=250_000)
    # accepted; the flash engine that serves it (step-3.5-flash) gets its own maximum output
    assert fake.last.body["max_tokens"] == 65_536


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "https://e.com/a.png"}},
    {"type": "video_url", "video_url": {"url": "https://e.com/a.mp4"}},
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}},
])
def test_field_rule_media_unsupported(split_gateway: Gateway, rkey: str, fake: FakeUpstream, part: dict) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client(split_gateway, rkey).chat.completions.create(
            model="step-router-v1", messages=[{"role": "user", "content": [{"type": "text", "text": "x"}, part]}])
    assert ei.value.response.json()["error"]["code"] == "unsupported_content_type"
    assert not fake.requests


def test_field_rule_web_search_unsupported(split_gateway: Gateway, rkey: str) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client(split_gateway, rkey).chat.completions.create(
            model="step-router-v1", messages=[{"role": "user", "content": EASY}],
            tools=[{"type": "web_search", "function": {"description": "search"}}])  # type: ignore[list-item]
    assert ei.value.response.json()["error"]["code"] == "unsupported_content_type"


def _effort_call(gw: Gateway, key: str, text: str, session: str, **body: object) -> httpx.Response:
    r = httpx.post(f"{gw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}",
                                                                  "x-session-id": session},
                   json={"model": "step-router-v1", "messages": [{"role": "user", "content": text}], **body},
                   timeout=30)
    assert r.status_code == 200, r.text
    return r


def test_router_maps_effort_per_engine(split_gateway: Gateway, rkey: str, fake: FakeUpstream) -> None:
    """Each engine gets the client's effort mapped to its own levels, as if asked for by name:
    step-3.5-flash (the default flash engine) has none, so nothing is sent; deepseek-v4-pro
    high/max (xhigh is a tie: its default, high)."""
    r = _effort_call(split_gateway, rkey, EASY, "eff-flash", reasoning_effort="minimal")
    assert r.headers["x-stepplan-routed-model"] == "step-3.5-flash"
    assert "reasoning_effort" not in fake.last.body and "x-stepplan-effort" not in r.headers
    for word, level in (("medium", "high"), ("xhigh", "high"), ("max", "max")):
        r = _effort_call(split_gateway, rkey, HARD, "eff-pro", reasoning_effort=word)
        assert r.headers["x-stepplan-routed-model"] == "deepseek-v4-pro"
        assert fake.last.body["reasoning_effort"] == level and r.headers["x-stepplan-effort"] == level, word
    # "none" (and thinking disabled): DeepSeek's own switch; no effort with it.
    r = _effort_call(split_gateway, rkey, HARD, "eff-pro", reasoning_effort="none")
    assert fake.last.body["thinking"] == {"type": "disabled"} and "reasoning_effort" not in fake.last.body
    assert "x-stepplan-effort" not in r.headers


def test_router_fallback_engine_gets_its_own_effort(split_gateway: Gateway, rkey: str, fake: FakeUpstream) -> None:
    for _ in range(2):  # one try + one retry on the pro engine
        fake.queue_json({"error": {"message": "overloaded"}}, status=503, headers={"retry-after": "0"})
    r = _effort_call(split_gateway, rkey, HARD, "eff-fb", reasoning_effort="max")
    assert [q.body.get("reasoning_effort") for q in fake.requests] == ["max", "max", None]  # flash: no levels
    assert r.headers["x-stepplan-routed-model"] == "step-3.5-flash" and "x-stepplan-effort" not in r.headers


# ------------------------------------------------------------------ routing and explanation
def test_hard_goes_to_pro_easy_to_flash(split_gateway: Gateway, rkey: str, fake: FakeUpstream) -> None:
    r = routed(split_gateway, rkey, [{"role": "user", "content": EASY}], headers={"x-session-id": "easy-1"})
    assert r.json()["model"] == "step-router-v1"
    assert r.headers["x-stepplan-routed-model"] == "step-3.5-flash"
    assert fake.last.body["model"] == "step-3.5-flash"
    assert "score=" in r.headers["x-stepplan-route-reason"]
    r = routed(split_gateway, rkey, [{"role": "user", "content": HARD}], headers={"x-session-id": "hard-1"})
    assert r.headers["x-stepplan-routed-model"] == "deepseek-v4-pro"
    assert fake.last.body["model"] == "deepseek-v4-pro"
    assert r.json()["model"] == "step-router-v1"


def test_streamed_routing_keeps_public_model_name(split_gateway: Gateway, rkey: str) -> None:
    r = routed(split_gateway, rkey, [{"role": "user", "content": HARD}], headers={"x-session-id": "hard-s"},
               stream=True)
    assert r.headers["x-stepplan-routed-model"] == "deepseek-v4-pro"
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert chunks and all(c["model"] == "step-router-v1" for c in chunks)


def test_stickiness_by_session_header(split_gateway: Gateway, rkey: str) -> None:
    r = routed(split_gateway, rkey, [{"role": "user", "content": HARD}], headers={"x-session-id": "sticky-1"})
    assert r.headers["x-stepplan-routed-model"] == "deepseek-v4-pro"
    follow_up = [{"role": "user", "content": HARD}, {"role": "assistant", "content": "done"},
                 {"role": "user", "content": EASY}]
    r = routed(split_gateway, rkey, follow_up, headers={"x-session-id": "sticky-1"})
    assert r.headers["x-stepplan-routed-model"] == "deepseek-v4-pro"
    assert r.headers["x-stepplan-route-reason"].startswith("sticky")
    # Another conversation with the same easy turn is not affected.
    r = routed(split_gateway, rkey, [{"role": "user", "content": EASY}], headers={"x-session-id": "other"})
    assert r.headers["x-stepplan-routed-model"] == "step-3.5-flash"


def test_stickiness_by_conversation_prefix(split_gateway: Gateway, rkey: str) -> None:
    opening = HARD + " (prefix variant)"
    routed(split_gateway, rkey, [{"role": "user", "content": opening}])
    r = routed(split_gateway, rkey, [{"role": "user", "content": opening}, {"role": "assistant", "content": "ok"},
                                     {"role": "user", "content": EASY}])
    assert r.headers["x-stepplan-routed-model"] == "deepseek-v4-pro"


# ------------------------------------------------------------------ fallback
def test_fallback_pro_to_flash_before_first_byte(split_gateway: Gateway, rkey: str, fake: FakeUpstream) -> None:
    for _ in range(2):  # one try + one retry on the pro engine
        fake.queue_json({"error": {"message": "overloaded"}}, status=503, headers={"retry-after": "0"})
    fake.queue_json(openai_completion("from flash"))
    r = routed(split_gateway, rkey, [{"role": "user", "content": HARD}], headers={"x-session-id": "fb-1"})
    assert r.headers["x-stepplan-routed-model"] == "step-3.5-flash"
    assert r.json()["choices"][0]["message"]["content"] == "from flash"
    assert [q.body["model"] for q in fake.requests] == ["deepseek-v4-pro", "deepseek-v4-pro", "step-3.5-flash"]


def test_fallback_flash_to_pro_streamed(split_gateway: Gateway, rkey: str, fake: FakeUpstream) -> None:
    for _ in range(2):
        fake.queue_json({"error": {"message": "down"}}, status=502)
    r = routed(split_gateway, rkey, [{"role": "user", "content": EASY}], headers={"x-session-id": "fb-2"},
               stream=True)
    assert r.headers["x-stepplan-routed-model"] == "deepseek-v4-pro"
    assert "data: [DONE]" in r.text
    assert [q.body["model"] for q in fake.requests] == ["step-3.5-flash", "step-3.5-flash", "deepseek-v4-pro"]


def test_no_fallback_on_client_error(split_gateway: Gateway, rkey: str, fake: FakeUpstream) -> None:
    fake.queue_json({"error": {"message": "bad"}}, status=400)
    with pytest.raises(openai.BadRequestError):
        client(split_gateway, rkey).chat.completions.create(
            model="step-router-v1", messages=[{"role": "user", "content": EASY}], extra_headers={"x-session-id": "n"})
    assert len(fake.requests) == 1


# ------------------------------------------------------------------ offline scoring command
def test_router_score_command_matches_server(tmp_path: Path, split_gateway: Gateway) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": t}], "other": 1})
                              for t in (HARD, EASY)) + "\n")
    out = subprocess.run([sys.executable, "-m", "stepplan", "--config", str(split_gateway.config), "router", "score",
                          str(data)], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 2 and all(0.0 <= r["score"] <= 1.0 for r in rows)
    assert rows[0]["engine"] == "deepseek-v4-pro" and rows[1]["engine"] == "step-3.5-flash"
    hard, easy = _scores()
    assert rows[0]["score"] == pytest.approx(hard) and rows[1]["score"] == pytest.approx(easy)

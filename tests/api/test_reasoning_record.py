"""Reasoning replay for clients that drop it (pitfall 17) must not depend on which worker answered
the previous turn, nor on the gateway having run without a restart: the record is in the database."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.billing.conftest import pg_url  # noqa: F401  (fixture)
from tests.conftest import make_gateway
from tests.fakes.upstream import FakeUpstream, openai_completion

MODEL = "step-3.5-flash"


def tool_turn(gw_base: str, key: str, fake: FakeUpstream, call_id: str, reasoning: str) -> dict:
    """The model thinks and calls a tool; returns the assistant message as an OpenAI client keeps it
    (clients such as OpenCode's do not echo ``reasoning_content``)."""
    fake.queue_json(openai_completion(None, reasoning=reasoning, tool_calls=[
        {"id": call_id, "type": "function", "function": {"name": "read", "arguments": "{}"}}]))
    r = httpx.post(f"{gw_base}/chat/completions", headers={"authorization": f"Bearer {key}", "connection": "close"},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "go"}]}, timeout=30)
    assert r.status_code == 200, r.text
    msg = r.json()["choices"][0]["message"]
    return {"role": "assistant", "content": msg.get("content"), "tool_calls": msg["tool_calls"]}


def follow_up(gw_base: str, key: str, fake: FakeUpstream, assistant: dict, call_id: str) -> dict:
    fake.queue_json(openai_completion("done"))
    messages = [{"role": "user", "content": "go"}, assistant,
                {"role": "tool", "tool_call_id": call_id, "content": "file contents"}]
    r = httpx.post(f"{gw_base}/chat/completions", headers={"authorization": f"Bearer {key}", "connection": "close"},
                   json={"model": MODEL, "messages": messages}, timeout=30)
    assert r.status_code == 200, r.text
    [sent] = [m for m in fake.last.body["messages"] if m["role"] == "assistant"]
    return sent


def test_reasoning_is_replayed_after_a_restart(tmp_path: Path, fake: FakeUpstream) -> None:
    gw = make_gateway(tmp_path, fake)
    gw.start()
    try:
        key = gw.new_key("restart")
        assistant = tool_turn(gw.openai_base, key, fake, "call_r1", "I should read the file first.")
        gw.stop()  # a deploy between two turns of an agent loop
        gw.start()
        sent = follow_up(gw.openai_base, key, fake, assistant, "call_r1")
        assert sent["reasoning_content"] == "I should read the file first."
    finally:
        gw.stop()


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_reasoning_is_replayed_whichever_worker_answers(tmp_path: Path, fake: FakeUpstream, db: str,
                                                        request: pytest.FixtureRequest) -> None:
    db_url = request.getfixturevalue("pg_url") if db == "postgresql" else None
    gw = make_gateway(tmp_path, fake, db_url=db_url)
    gw.start(workers=2)
    try:
        key = gw.new_key("workers")
        for i in range(8):  # new connections spread over both workers
            assistant = tool_turn(gw.openai_base, key, fake, f"call_w{i}", f"reasoning {i}")
            for _ in range(3):
                sent = follow_up(gw.openai_base, key, fake, assistant, f"call_w{i}")
                assert sent.get("reasoning_content") == f"reasoning {i}"
    finally:
        gw.stop()

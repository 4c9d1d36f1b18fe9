"""The embedded model (protocol ``local``) end to end: a real gateway process running
SmolLM2-135M in process, driven over HTTP with the official SDKs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.conftest import ROOT, Gateway
from tests.fakes.upstream import free_port

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'stepplan[local]')")

pytestmark = pytest.mark.slow

PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


def local_gateway(tmp: Path, upstreams: str, extra: str = "", env: dict[str, str] | None = None) -> Gateway:
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "stepplan.toml"
    config.write_text(f"""
[database]
url = "sqlite:///{tmp}/stepplan.db"

[billing]
enabled = false

{upstreams}
{extra}
""")
    e = {k: v for k, v in os.environ.items() if not k.startswith("STEPPLAN_")}
    env = dict(env or {})
    e["PYTHONPATH"] = os.pathsep.join(p for p in (env.pop("PYTHONPATH", ""), str(ROOT)) if p)
    e.update(env)
    return Gateway(port=free_port(), config=config, workdir=tmp, env=e)


@pytest.fixture(scope="module")
def local_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # The only upstream is the embedded model, so every model is served by it. A second,
    # tiny-context copy serves step-3.5-flash-2603 to exercise truncation.
    gw = local_gateway(tmp_path_factory.mktemp("local"), """
[upstreams.local]
protocol = "local"

[upstreams.tiny]
protocol = "local"
n_ctx = 512

[models."step-3.5-flash-2603"]
upstream = "tiny"
""")
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def client(local_gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=local_gw.openai_base, api_key=local_gw.new_key("local-tester"), timeout=120,
                         max_retries=0)


def test_the_model_is_loaded_at_start_up_before_any_request(local_gw: Gateway) -> None:
    # Both local upstreams serve some model, so both start loading in the background.
    deadline = time.time() + 60
    while not all(f"local model {name} loaded" in local_gw.log_text() for name in ("local", "tiny")):
        assert time.time() < deadline, local_gw.log_text()
        time.sleep(0.1)
    # Loading two models at once must not silence the process's stderr (llama.cpp's
    # verbose=False swaps file descriptors process-wide): later calls are still logged.
    r = httpx.post(f"{local_gw.openai_base}/chat/completions", timeout=120,
                   headers={"authorization": f"Bearer {local_gw.new_key('log-check')}"},
                   json={"model": "step-3.5-flash", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    trace = r.headers["x-trace-id"]
    while trace not in local_gw.log_text():
        assert time.time() < deadline + 10, local_gw.log_text()
        time.sleep(0.1)


def ask(client: openai.OpenAI, text: str, **kw):
    return client.chat.completions.create(model=kw.pop("model", "step-3.5-flash"),
                                          messages=[{"role": "user", "content": text}], **kw)


def test_non_streaming_answer_has_real_text_and_usage(client: openai.OpenAI) -> None:
    resp = ask(client, "What is the capital of France? Answer in one word.", max_tokens=12, temperature=0)
    choice = resp.choices[0]
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 5
    assert 0 < resp.usage.completion_tokens <= 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_max_tokens_is_honoured_and_reported_as_length(client: openai.OpenAI) -> None:
    resp = ask(client, "Write a long poem about the sea.", max_tokens=5, temperature=0)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 5


def test_streaming_with_the_sdk(client: openai.OpenAI) -> None:
    stream = ask(client, "Say hello to the world.", max_tokens=16, stream=True,
                 stream_options={"include_usage": True})
    text, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(text).strip()
    assert finish in ("stop", "length")
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0


def test_raw_stream_streams_tokens_and_ends_with_done(local_gw: Gateway, client: openai.OpenAI) -> None:
    body = {"model": "step-3.5-flash", "stream": True, "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": "Count: one, two, three"}]}
    headers = {"authorization": f"Bearer {client.api_key}"}
    frames: list[bytes] = []
    with httpx.stream("POST", f"{local_gw.openai_base}/chat/completions", json=body, headers=headers,
                      timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                frames.append(line[6:].encode())
    assert frames[-1] == b"[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert sum(1 for d in deltas if d) >= 2  # token by token, not one blob
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_image_for_a_vision_model_becomes_a_placeholder(client: openai.OpenAI) -> None:
    content = [{"type": "text", "text": "What is in this picture?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}}]
    resp = client.chat.completions.create(model="step-3.7-flash", max_tokens=16,
                                          messages=[{"role": "user", "content": content}])
    assert resp.choices[0].message.content
    assert resp.usage.completion_tokens > 0
    # A model without vision still refuses images, before the engine is involved.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="step-3.5-flash", max_tokens=8,
                                       messages=[{"role": "user", "content": content}])


def test_forced_tool_call_is_grammar_constrained(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    resp = ask(client, "What is the weather in Paris?", tools=tools, max_tokens=40,
               tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)

    stream = ask(client, "What is the weather in Rome?", tools=tools, max_tokens=40, stream=True,
                 tool_choice={"type": "function", "function": {"name": "get_weather"}})
    args, names, finish = [], [], None
    for chunk in stream:
        for tc in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            names.append(tc.function.name)
            args.append(tc.function.arguments or "")
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "tool_calls"
    assert names[0] == "get_weather"
    assert "city" in json.loads("".join(args))


def test_anthropic_messages_through_the_local_model(local_gw: Gateway, client: openai.OpenAI) -> None:
    ac = anthropic.Anthropic(base_url=local_gw.anthropic_base, api_key=client.api_key, timeout=120, max_retries=0)
    msg = ac.messages.create(model="step-3.5-flash", max_tokens=16, system="Be brief.",
                             messages=[{"role": "user", "content": "Say hi."}])
    assert msg.content[0].type == "text" and msg.content[0].text
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    with ac.messages.stream(model="step-3.5-flash", max_tokens=16,
                            messages=[{"role": "user", "content": "Say hi."}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text
    assert final.usage.output_tokens > 0


def test_long_conversation_is_truncated_to_the_context_window(client: openai.OpenAI) -> None:
    filler = "The quick brown fox jumps over the lazy dog. " * 30  # ~300 tokens per turn
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for i in range(6):
        messages += [{"role": "user", "content": f"Turn {i}: {filler}"}, {"role": "assistant", "content": "Noted."}]
    messages.append({"role": "user", "content": "Say OK."})
    resp = client.chat.completions.create(model="step-3.5-flash-2603", messages=messages, max_tokens=8)
    assert resp.choices[0].message.content
    assert resp.usage.prompt_tokens < 512  # older turns were dropped to fit n_ctx = 512


def test_a_last_turn_larger_than_the_context_window_is_a_clear_400(client: openai.OpenAI) -> None:
    huge = "The quick brown fox jumps over the lazy dog. " * 200  # ~2,000 tokens
    with pytest.raises(openai.BadRequestError) as exc:
        ask(client, huge, model="step-3.5-flash-2603", max_tokens=8)
    assert "context window is 512 tokens" in str(exc.value)


def test_closing_a_stream_early_stops_generation(client: openai.OpenAI) -> None:
    long_req = {"messages": [{"role": "user", "content": "Write a very long story about a dragon and a knight."}],
                "model": "step-3.5-flash", "max_tokens": 300, "temperature": 0, "seed": 7}
    # Reference: the same greedy request generates all 300 tokens when left alone.
    t0 = time.perf_counter()
    full = client.chat.completions.create(**long_req)
    full_s = time.perf_counter() - t0
    assert full.usage.completion_tokens == 300, "the reference request must run to max_tokens"

    stream = client.chat.completions.create(**long_req, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()  # the client goes away after the first token

    t0 = time.perf_counter()
    short = ask(client, "Say hi.", max_tokens=4)
    short_s = time.perf_counter() - t0
    assert short.usage.completion_tokens > 0
    # Had the abandoned generation kept running, this request would have queued behind it.
    assert short_s < full_s / 2, f"next request took {short_s:.2f}s; a full generation takes {full_s:.2f}s"


def test_concurrent_requests_are_serialised_and_all_answered(local_gw: Gateway, client: openai.OpenAI) -> None:
    import asyncio

    async def run() -> list[int]:
        ac = openai.AsyncOpenAI(base_url=local_gw.openai_base, api_key=client.api_key, timeout=120, max_retries=0)
        try:
            rs = await asyncio.gather(*(ac.chat.completions.create(
                model="step-3.5-flash", max_tokens=6, messages=[{"role": "user", "content": f"Say the number {i}."}])
                for i in range(4)))
        finally:
            await ac.close()
        return [r.usage.completion_tokens for r in rs]

    assert all(n > 0 for n in asyncio.run(run()))


def test_not_installed_is_a_clear_502_not_a_crash(tmp_path: Path) -> None:
    # A llama_cpp that cannot be imported, shadowing the real one.
    shadow = tmp_path / "shadow" / "llama_cpp"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('libllama.so: cannot open shared object file')\n")
    gw = local_gateway(tmp_path / "gw", "[upstreams.local]\nprotocol = \"local\"\n",
                       env={"PYTHONPATH": str(tmp_path / "shadow")})
    gw.start()  # start-up must not need the model
    try:
        c = openai.OpenAI(base_url=gw.openai_base, api_key=gw.new_key("nobody"), max_retries=0, timeout=60)
        with pytest.raises(openai.APIStatusError) as exc:
            ask(c, "hi", max_tokens=4)
        assert exc.value.status_code == 502
        assert "pip install 'stepplan[local]'" in str(exc.value)
        with pytest.raises(openai.APIStatusError) as exc:
            list(ask(c, "hi", max_tokens=4, stream=True))
        assert exc.value.status_code == 502
    finally:
        gw.stop()

"""Credit on the Responses API: the exact charge of a Responses call equals that of the same call on
chat completions (streamed and not, with and without cache hits, on both upstream kinds), and every
ledger entry records the client protocol."""

from __future__ import annotations

import openai
import pytest

from tests.billing.conftest import Admin, expected_micro
from tests.billing.test_exact_credits import CACHED, OUTPUT, PROMPT, queue_anthropic_usage, queue_openai_usage
from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream

PROMPT_TEXT = "How much does this cost?"


def call_chat(gw: Gateway, key: str, model: str, stream: bool) -> None:
    client = openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0, timeout=30)
    msgs = [{"role": "user", "content": PROMPT_TEXT}]
    if stream:
        assert any(c.usage for c in client.chat.completions.create(model=model, messages=msgs, stream=True,  # type: ignore[arg-type]
                                                                  stream_options={"include_usage": True}))
    else:
        client.chat.completions.create(model=model, messages=msgs)  # type: ignore[arg-type]


def call_responses(gw: Gateway, key: str, model: str, stream: bool) -> int:
    """The Responses call; returns the output tokens the client was told about."""
    client = openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0, timeout=30)
    if stream:
        with client.responses.stream(model=model, input=PROMPT_TEXT) as s:
            r = s.get_final_response()
    else:
        r = client.responses.create(model=model, input=PROMPT_TEXT)
    assert r.usage is not None
    return r.usage.output_tokens


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("cached", [0, CACHED], ids=["nocache", "cache"])
@pytest.mark.parametrize("upstream", ["openai", "anthropic"])
def test_responses_charge_equals_chat_completions(bgw: Gateway, admin: Admin, bgw_anth: Gateway, admin_anth: Admin,
                                                  fake: FakeUpstream, upstream: str, cached: int,
                                                  stream: bool) -> None:
    gw, adm = (bgw, admin) if upstream == "openai" else (bgw_anth, admin_anth)
    queue = queue_openai_usage if upstream == "openai" else queue_anthropic_usage
    model = "step-3.7-flash"
    chat_name, chat_key = adm.account()
    queue(fake, stream, cached)
    call_chat(gw, chat_key, model, stream)
    resp_name, resp_key = adm.account()
    queue(fake, stream, cached)
    assert call_responses(gw, resp_key, model, stream) == OUTPUT
    want = expected_micro(model, PROMPT - cached, cached, OUTPUT)
    assert adm.consumed(chat_name) == adm.consumed(resp_name) == want
    chat_entry, resp_entry = adm.entries(chat_name)[0], adm.entries(resp_name)[0]
    assert chat_entry["protocol"] == "openai" and resp_entry["protocol"] == "responses"
    for col in ("cost", "charged", "input_tokens", "cache_read_tokens", "output_tokens", "rate_input", "status"):
        assert chat_entry[col] == resp_entry[col], col


def test_anthropic_calls_record_their_protocol(bgw: Gateway, admin: Admin, fake: FakeUpstream) -> None:
    import anthropic

    name, key = admin.account()
    anthropic.Anthropic(base_url=bgw.anthropic_base, api_key=key, max_retries=0).messages.create(
        model="step-3.5-flash", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    assert admin.entries(name)[0]["protocol"] == "anthropic"

"""A streamed ``redacted_thinking`` block from an Anthropic upstream reaches Anthropic clients whole
(and comes back on the next turn unchanged); OpenAI clients, which have no such block, get the rest."""

from __future__ import annotations

import anthropic
import openai

from tests.anthropic.wire import (
    MESSAGE_STOP,
    block_delta,
    block_start,
    block_stop,
    message_delta,
    message_start,
)
from tests.fakes.upstream import FakeUpstream

USER = [{"role": "user", "content": "hi"}]


def redacted_stream() -> list:
    return [message_start(),
            block_start(0, {"type": "redacted_thinking", "data": "EncryptedBlob=="}), block_stop(0),
            block_start(1, {"type": "text", "text": ""}),
            block_delta(1, {"type": "text_delta", "text": "Hello."}), block_stop(1),
            message_delta("end_turn"), MESSAGE_STOP]


def test_a_streamed_redacted_thinking_block_reaches_anthropic_clients_and_round_trips(
        aclient: anthropic.Anthropic, fake: FakeUpstream) -> None:
    fake.queue_sse(redacted_stream())
    with aclient.messages.stream(model="step-3.5-flash", max_tokens=100, messages=USER) as s:
        m = s.get_final_message()
    blocks = [b.model_dump(exclude_none=True) for b in m.content]
    assert blocks == [{"type": "redacted_thinking", "data": "EncryptedBlob=="}, {"type": "text", "text": "Hello."}]
    fake.queue_sse(redacted_stream())
    history = [*USER, {"role": "assistant", "content": blocks}, {"role": "user", "content": "and?"}]
    with aclient.messages.stream(model="step-3.5-flash", max_tokens=100, messages=history) as s:
        s.get_final_message()
    assert fake.last.body["messages"][1]["content"][0] == {"type": "redacted_thinking", "data": "EncryptedBlob=="}


def test_openai_clients_get_the_text_of_a_stream_with_redacted_thinking(oclient: openai.OpenAI,
                                                                      fake: FakeUpstream) -> None:
    fake.queue_sse(redacted_stream())
    chunks = list(oclient.chat.completions.create(model="step-3.5-flash", messages=USER, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello." and chunks[-1].choices[0].finish_reason == "stop"

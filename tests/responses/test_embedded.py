"""The Responses API served by the embedded model (protocol ``local``): real text, usage, a streamed answer
the SDK accepts event by event, and ``max_output_tokens`` reported as incomplete."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import Gateway

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'stepplan[local]')")

from tests.engines.test_local_engine import local_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    gw: Gateway = local_gateway(tmp_path_factory.mktemp("responses-local"), '[upstreams.local]\nprotocol = "local"\n')
    gw.start()
    try:
        yield openai.OpenAI(base_url=gw.openai_base, api_key=gw.new_key("responses-local"), timeout=120,
                            max_retries=0)
    finally:
        gw.stop()


def test_embedded_model_answers(local_client: openai.OpenAI) -> None:
    r = local_client.responses.create(model="step-3.5-flash", input="What is the capital of France? One word.",
                                      max_output_tokens=12, temperature=0)
    assert r.output_text.strip() and r.status in ("completed", "incomplete")
    assert r.usage is not None and r.usage.input_tokens > 5 and 0 < r.usage.output_tokens <= 12
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_embedded_model_streams_and_stops_at_max_output_tokens(local_client: openai.OpenAI) -> None:
    with local_client.responses.stream(model="step-3.5-flash", input="Write a long poem about the sea.",
                                       max_output_tokens=5, temperature=0) as s:
        events = list(s)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.incomplete"  # (the SDK's get_final_response() wants response.completed)
    final = events[-1].response
    assert final.status == "incomplete"
    assert final.incomplete_details is not None and final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text == "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.usage is not None and final.usage.output_tokens == 5

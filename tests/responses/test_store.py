"""Stored responses (``store`` true, the default): retrieve, input items, delete, previous_response_id,
cancel; per account only."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream, openai_completion, openai_text_stream


@pytest.fixture(scope="module")
def other(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base, api_key=gateway.new_key("responses-other"), max_retries=0)


def test_retrieve_and_list_input_items(client: openai.OpenAI) -> None:
    r = client.responses.create(model="step-3.5-flash", input=[
        {"role": "developer", "content": "rules"},
        {"type": "message", "id": "msg_client1", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}])
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.status == "completed"
    assert got.usage is not None and got.usage.total_tokens == 18
    items = client.responses.input_items.list(r.id, order="asc")
    assert [i.type for i in items.data] == ["message", "message"]
    assert items.data[1].id == "msg_client1"
    first = items.data[0]
    assert first.type == "message" and first.role == "developer" and first.id.startswith("msg_")
    assert first.content[0].type == "input_text" and first.content[0].text == "rules"
    page = client.responses.input_items.list(r.id, limit=1)  # newest first by default
    assert [i.id for i in page.data] == ["msg_client1"] and page.has_more
    rest = client.responses.input_items.list(r.id, limit=1, after="msg_client1")
    assert [i.id for i in rest.data] == [first.id] and not rest.has_more


def test_stream_is_stored_before_it_ends(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_sse(openai_text_stream("streamed answer", reasoning="hidden"))
    with client.responses.stream(model="step-3.7-flash", input="hi") as s:
        final = s.get_final_response()
    got = client.responses.retrieve(final.id)
    assert got.output_text == "streamed answer"
    assert got.output[0].type == "reasoning" and got.output[0].encrypted_content is None
    sealed = client.responses.retrieve(final.id, include=["reasoning.encrypted_content"])
    assert sealed.output[0].type == "reasoning" and sealed.output[0].encrypted_content


def test_previous_response_id_carries_the_conversation(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue_json(openai_completion("Paris.", reasoning="capital of France"))
    r1 = client.responses.create(model="step-3.5-flash", input="capital of France?", instructions="terse")
    fake.queue_json(openai_completion("About 2 million."))
    r2 = client.responses.create(model="step-3.5-flash", input="population?", previous_response_id=r1.id,
                                 instructions="still terse")
    assert r2.previous_response_id == r1.id
    client.responses.create(model="step-3.5-flash", input="and area?", previous_response_id=r2.id)
    msgs = fake.last.body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in msgs] == ["capital of France?", "Paris.", "population?", "About 2 million.",
                                            "and area?"]
    assert msgs[1]["reasoning_content"] == "capital of France"  # the stored reasoning is replayed too


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    r = client.responses.create(model="step-3.5-flash", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="step-3.5-flash", input="y", previous_response_id=r.id)
    assert exc.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_responses_are_visible_to_their_account_only(client: openai.OpenAI, other: openai.OpenAI) -> None:
    r = client.responses.create(model="step-3.5-flash", input="mine")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(r.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(r.id)
    with pytest.raises(openai.BadRequestError):
        other.responses.create(model="step-3.5-flash", input="y", previous_response_id=r.id)
    assert client.responses.retrieve(r.id).id == r.id


def test_delete(client: openai.OpenAI, gateway: Gateway, key: str) -> None:
    r = client.responses.create(model="step-3.5-flash", input="bye")
    resp = httpx.delete(f"{gateway.openai_base}/responses/{r.id}", headers={"authorization": f"Bearer {key}"})
    assert resp.status_code == 200 and resp.json() == {"id": r.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_cancel_is_not_supported_for_finished_responses(client: openai.OpenAI) -> None:
    r = client.responses.create(model="step-3.5-flash", input="x")
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.cancel(r.id)
    assert "background" in exc.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_missing")


def test_bad_listing_parameters_name_the_field(client: openai.OpenAI, gateway: Gateway, key: str) -> None:
    r = client.responses.create(model="step-3.5-flash", input="x")
    base = f"{gateway.openai_base}/responses/{r.id}/input_items"
    auth = {"authorization": f"Bearer {key}"}
    for params, param in (({"limit": "0"}, "limit"), ({"order": "up"}, "order"), ({"after": "msg_x"}, "after")):
        resp = httpx.get(base, params=params, headers=auth)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param

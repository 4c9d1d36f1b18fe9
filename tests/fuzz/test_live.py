"""Schemathesis against a live gateway (issue 16 §3): the gateway's own OpenAPI document, and the
official OpenAI spec's ``POST /chat/completions`` (tests/fuzz/openai-chat-completions.json, see
extract_openai_spec.py), both with a valid key, against the fake upstream.

Generated cases are both schema-valid (positive) and deliberately invalid (negative). Every response
must be below 500, or one of the documented upstream statuses 502/503/504; the fake upstream never
fails here, so those are recorded too. For our own document the responses must also match the
document: status codes, content types and body schemas.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stepplan.api.openapi import UPSTREAM_STATUSES, document
from stepplan.protocols.limits import InputLimits
from tests.conftest import Gateway, make_gateway
from tests.fakes.upstream import FakeUpstream
from tests.fuzz.conftest import case as fuzz_case
from tests.fuzz.conftest import server_error, status

pytestmark = pytest.mark.fuzz

OPENAI_SPEC = Path(__file__).with_name("openai-chat-completions.json")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[tuple[Gateway, str]]:
    gw = make_gateway(tmp_path_factory.mktemp("fuzz"), fake)
    gw.start()
    key = gw.new_key("fuzzer")
    yield gw, key
    log = gw.log_text()
    gw.stop()
    assert "unhandled error" not in log, log[log.find("unhandled error") - 200:][:3000]


def operations(schema: schemathesis.BaseSchema) -> list[APIOperation]:
    return [r.ok() for r in schema.get_all_operations()]


# Our document as the gateway under test serves it (default limits; the serving test in
# test_openapi_document.py checks the route). Loaded at collection: one test per operation.
OURS = operations(schemathesis.openapi.from_dict(document(InputLimits())))
THEIRS = operations(schemathesis.openapi.from_path(OPENAI_SPEC))
MODES = st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


MODELS = st.sampled_from(["step-3.5-flash", "step-3.7-flash", "step-router-v1"])


def draw_case(data: st.DataObject, operation: APIOperation) -> schemathesis.Case:
    """A generated case; most bodies get a model of the catalog, so they go past the model look-up to
    the pipeline, the upstream encoders and the fake upstream."""
    case = data.draw(operation.as_strategy(data.draw(MODES)))
    if isinstance(case.body, dict) and data.draw(st.integers(0, 3)) > 0:
        case.body["model"] = data.draw(MODELS)
    return case


def call(suite: str, case: schemathesis.Case, fuzzed: tuple[Gateway, str]) -> schemathesis.Response:
    gw, key = fuzzed
    label = f"{case.method} {case.formatted_path} {case.body!r}"
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ("authorization", "x-api-key")}
    case.headers = {**headers, "authorization": f"Bearer {key}"}  # the cases are about bodies, not keys
    with fuzz_case(suite, label):
        response = case.call(base_url=gw.openai_base, timeout=60)
    code = response.status_code
    status(suite, code)
    if code >= 500:
        server_error(suite, f"{code} {label}: {response.text[:300]}")
        assert code in UPSTREAM_STATUSES, f"{code} for {label}: {response.text[:500]}"
    return response


@pytest.mark.parametrize("operation", OURS, ids=lambda o: o.label)
@settings(settings.get_profile("stepplan-live"))
@given(data=st.data())
def test_our_document(operation: APIOperation, data: st.DataObject, fuzzed: tuple[Gateway, str]) -> None:
    case = draw_case(data, operation)
    response = call("live: our document", case, fuzzed)
    case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                             response_schema_conformance])


@pytest.mark.parametrize("operation", THEIRS, ids=lambda o: o.label)
@settings(settings.get_profile("stepplan-openai-spec"))
@given(data=st.data())
def test_the_openai_chat_completions_spec(operation: APIOperation, data: st.DataObject,
                                          fuzzed: tuple[Gateway, str]) -> None:
    call("live: OpenAI spec chat completions", draw_case(data, operation), fuzzed)

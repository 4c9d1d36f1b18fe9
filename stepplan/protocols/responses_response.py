"""OpenAI Responses answers: canonical :class:`Response` → the ``response`` object.

An :class:`Answer` is one response being written: its id, the model name the client asked for,
the client's :class:`~stepplan.protocols.responses_request.Shape`, and the sealer for reasoning.
Output items are built in full (every ``reasoning`` item carries the sealed upstream reasoning,
which is what gets stored for ``previous_response_id``); :meth:`Answer.client_item` is what the
client sees: ``encrypted_content`` only when it asked for ``reasoning.encrypted_content``.

Usage: ``input_tokens`` includes cached tokens (``input_tokens_details.cached_tokens``) and
``output_tokens`` includes reasoning (``output_tokens_details.reasoning_tokens``), as on OpenAI.
A call cut by ``max_output_tokens`` (or a content filter) is ``incomplete`` with
``incomplete_details.reason``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from .canonical import Response, StopReason, Text, Thinking, ToolCall, Usage
from .responses_request import CUSTOM_INPUT, Shape

if TYPE_CHECKING:
    from ..reasoning_seal import Sealer

INCOMPLETE: dict[str, str] = {"max_tokens": "max_output_tokens", "content_filter": "content_filter"}


def usage_to_responses(u: Usage) -> dict[str, Any]:
    prompt = u.input + u.cache_read + u.cache_write
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": u.cache_read, "cache_write_tokens": u.cache_write},
        "output_tokens": u.output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": prompt + u.output,
    }


def status_of(stop: StopReason) -> tuple[str, dict[str, str] | None]:
    """The response status (and ``incomplete_details``) for how the model stopped."""
    reason = INCOMPLETE.get(stop)
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def custom_input(arguments: str) -> str:
    """The raw input of a custom tool call from the one-string-argument function call the model made:
    the ``input`` argument, or the only string argument, or the arguments text itself."""
    try:
        v = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(v, dict):
        if isinstance(v.get(CUSTOM_INPUT), str):
            return v[CUSTOM_INPUT]
        strings = [x for x in v.values() if isinstance(x, str)]
        if len(v) == 1 and strings:
            return strings[0]
        if not v:
            return ""
    return arguments


def new_response_id(trace: str) -> str:
    return f"resp_{trace}{os.urandom(4).hex()}"


@dataclass(slots=True)
class Answer:
    id: str
    model: str  # the name the client asked for
    shape: Shape
    sealer: Sealer
    created_at: int = field(default_factory=lambda: int(time.time()))
    _n: int = 0
    _calls: set[str] = field(default_factory=set)

    # ---------------------------------------------------------------- ids
    def item_id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self.id[5:]}{self._n:03d}"

    def call_item_id(self, exposed: str) -> str:
        return self.item_id("ctc" if self.shape.client_tool(exposed).custom else "fc")

    def call_id(self, upstream: str | None) -> str:
        """The client-facing call id: the upstream's, unless it is missing or repeats one already used."""
        cid = upstream or f"call_{os.urandom(12).hex()}"
        if cid in self._calls:
            cid = f"{cid}_{len(self._calls)}"
        self._calls.add(cid)
        return cid

    # ---------------------------------------------------------------- items (full: what is stored)
    def reasoning_item(self, item_id: str, text: str, signature: str | None = None,
                       redacted: bool = False) -> dict[str, Any]:
        summary = [{"type": "summary_text", "text": text}] if self.shape.summary and text and not redacted else []
        return {"id": item_id, "type": "reasoning", "summary": summary,
                "encrypted_content": self.sealer.seal(text, signature, redacted)}

    @staticmethod
    def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
        return {"id": item_id, "type": "message", "role": "assistant", "status": status,
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}

    def call_item(self, item_id: str, call_id: str, exposed: str, payload: str,
                  status: str = "completed") -> dict[str, Any]:
        """A ``function_call`` (``payload`` = arguments) or, for a custom tool, a ``custom_tool_call``
        (``payload`` = the function arguments, turned back into the raw input)."""
        tool = self.shape.client_tool(exposed)
        if tool.custom:
            item: dict[str, Any] = {"id": item_id, "type": "custom_tool_call", "call_id": call_id, "name": tool.name,
                                    "input": custom_input(payload), "status": status}
        else:
            item = {"id": item_id, "type": "function_call", "call_id": call_id, "name": tool.name,
                    "arguments": payload, "status": status}
        if tool.namespace:
            item["namespace"] = tool.namespace
        return item

    def client_item(self, item: dict[str, Any]) -> dict[str, Any]:
        if item["type"] == "reasoning" and not self.shape.include_encrypted:
            return {k: v for k, v in item.items() if k != "encrypted_content"}
        return item

    # ---------------------------------------------------------------- the response object
    def response(self, status: str, output: list[dict[str, Any]], usage: Usage | None, *,
                 incomplete: dict[str, str] | None = None, error: dict[str, Any] | None = None,
                 client: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "error": error, "incomplete_details": incomplete, "model": self.model,
            "output": [self.client_item(i) for i in output] if client and not self.shape.include_encrypted
            else output,
            "usage": usage_to_responses(usage) if usage is not None else None,
            **self.shape.echo,
        }
        if status in ("completed", "incomplete"):
            body["completed_at"] = int(time.time())
        return body


def output_items(resp: Response, answer: Answer) -> list[dict[str, Any]]:
    """A finished canonical response as output items, in the order the model produced them."""
    items: list[dict[str, Any]] = []
    status, _ = status_of(resp.stop_reason)
    texts: list[str] = []
    msg_at = -1

    for b in resp.content:
        if isinstance(b, Thinking):
            items.append(answer.reasoning_item(answer.item_id("rs"), b.text, b.signature, b.redacted))
        elif isinstance(b, Text):
            if not b.text:
                continue
            if msg_at < 0:  # one message item holds all of the answer's text
                msg_at = len(items)
                items.append({})
            texts.append(b.text)
        elif isinstance(b, ToolCall):
            item_id = answer.call_item_id(b.name)
            items.append(answer.call_item(item_id, answer.call_id(b.id), b.name, b.arguments or "{}"))
    if msg_at >= 0:
        items[msg_at] = answer.message_item(answer.item_id("msg"), "".join(texts), status)
    return items


def encode_response(resp: Response, answer: Answer) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(what the client receives, what is stored — None when the client did not ask to store it):
    they differ only in sealed reasoning."""
    output = output_items(resp, answer)
    status, incomplete = status_of(resp.stop_reason)
    client = answer.response(status, output, resp.usage, incomplete=incomplete)
    if not answer.shape.store:
        return client, None
    return client, answer.response(status, output, resp.usage, incomplete=incomplete, client=False)


__all__ = ["Answer", "custom_input", "encode_response", "new_response_id", "output_items", "status_of",
           "usage_to_responses"]

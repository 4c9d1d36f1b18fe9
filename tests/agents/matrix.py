"""The agent matrix of issue 18: each agent, on each client protocol it has, does a say-hi run
and a tool round trip through the real gateway against the scripted fake upstream.

An :class:`AgentRun` is one such run's world: a fresh workdir and HOME, a key of its own
account, and an :class:`~tests.agents.ingress.Ingress` between the agent and the gateway,
so every check can say what the agent sent, what the gateway answered and what the
upstream received. :meth:`AgentRun.why` is the failure message every assertion carries:
the agent, the protocol, the last request the agent sent (with the gateway's error answer),
the last request body the upstream got, and the agent's output tails.

The upstream is scripted by a :class:`Script`: it answers the agent's main requests (by
default, those carrying tools) with the given steps in order, in whichever protocol and
streaming mode the request came in, and gives anything else (title or memory requests) the
fake's default reply.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.agents.cli import Run, run
from tests.agents.ingress import Exchange, Ingress
from tests.conftest import Gateway
from tests.fakes.upstream import (
    DEFAULT_USAGE,
    FakeUpstream,
    Recorded,
    Reply,
    ReplyFn,
    anthropic_message,
    anthropic_text_stream,
    openai_chunk,
    openai_completion,
    openai_text_stream,
)

MODEL = "step-3.5-flash"
HI = "Hi there, from the scripted fake upstream."
FILE_NAME = "notes.txt"
FILE_TEXT = "The tide table says seven herons at noon."
FINAL = "notes.txt says: seven herons at noon."
REASONING = "The user asks what notes.txt says; I will read it with the file tool."
CALL_ID = "callread42"  # alphanumeric: OpenClaw strips anything else from tool call ids
PATHS = {"openai": "/step_plan/v1/chat/completions", "anthropic": "/step_plan/v1/messages"}

# (client protocol, gateway): every pairing once per agent. The say-hi runs go straight through
# (OpenAI client on the OpenAI-protocol upstream, Anthropic client on the Anthropic one), the
# round trips are translated both ways, where tool calls and results change shape.
SAY_HI = [("openai", "oup"), ("anthropic", "aup")]
ROUND_TRIP = [("openai", "aup"), ("anthropic", "oup")]


# ------------------------------------------------------------------ replies in the request's own protocol
def text_reply(text: str, reasoning: str | None = None) -> ReplyFn:
    def reply(path: str, body: Any) -> Reply:
        stream = bool(body.get("stream"))
        if path.endswith("/messages"):
            if stream:
                return Reply(sse=anthropic_text_stream(text, MODEL, thinking=reasoning))
            return Reply(json=anthropic_message(text, MODEL, thinking=reasoning))
        if stream:
            return Reply(sse=openai_text_stream(text, MODEL, reasoning=reasoning))
        return Reply(json=openai_completion(text, MODEL, reasoning=reasoning))
    return reply


def tool_reply(name: str, args: dict[str, Any], call_id: str = CALL_ID, reasoning: str = REASONING) -> ReplyFn:
    """One call of tool ``name`` (arguments split over two stream deltas), after some reasoning."""
    arguments = json.dumps(args)
    cut = len(arguments) // 2

    def reply(path: str, body: Any) -> Reply:
        stream = bool(body.get("stream"))
        if path.endswith("/messages"):
            if not stream:
                return Reply(json=anthropic_message("", MODEL, thinking=reasoning,
                                                    tool_uses=[{"id": call_id, "name": name, "input": args}]))
            return Reply(sse=_anthropic_tool_stream(name, arguments, call_id, reasoning))
        if not stream:
            return Reply(json=openai_completion(None, MODEL, reasoning=reasoning, tool_calls=[
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]))
        return Reply(sse=[
            openai_chunk({"role": "assistant", "content": ""}, model=MODEL),
            openai_chunk({"reasoning_content": reasoning}, model=MODEL),
            openai_chunk({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                          "function": {"name": name, "arguments": arguments[:cut]}}]}, model=MODEL),
            openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[cut:]}}]}, model=MODEL),
            openai_chunk({}, "tool_calls", model=MODEL),
            {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [],
             "usage": DEFAULT_USAGE},
            "[DONE]",
        ])
    return reply


def _anthropic_tool_stream(name: str, arguments: str, call_id: str, reasoning: str) -> list[Any]:
    cut = len(arguments) // 2

    def ev(kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
        return kind, {"type": kind, **data}

    return [
        ev("message_start", message={"id": "msg_up1", "type": "message", "role": "assistant", "model": MODEL,
                                     "content": [], "stop_reason": None, "stop_sequence": None,
                                     "usage": {"input_tokens": 40, "output_tokens": 1}}),
        ev("content_block_start", index=0, content_block={"type": "thinking", "thinking": "", "signature": ""}),
        ev("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": reasoning}),
        ev("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "upstream-sig-7"}),
        ev("content_block_stop", index=0),
        ev("content_block_start", index=1, content_block={"type": "tool_use", "id": call_id, "name": name,
                                                          "input": {}}),
        ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": arguments[:cut]}),
        ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": arguments[cut:]}),
        ev("content_block_stop", index=1),
        ev("message_delta", delta={"stop_reason": "tool_use", "stop_sequence": None}, usage={"output_tokens": 30}),
        ev("message_stop"),
    ]


def has_tools(body: Any) -> bool:
    return isinstance(body, dict) and bool(body.get("tools"))


class Script:
    """The fake upstream's answers to one agent run (install with ``fake.responder = script``)."""

    def __init__(self, fake: FakeUpstream, *steps: ReplyFn, is_main: Callable[[Any], bool] = has_tools) -> None:
        self.fake = fake
        self.steps = list(steps)
        self.is_main = is_main
        self.main: list[Recorded] = []  # the requests the steps answered, in order
        fake.responder = self

    def __call__(self, path: str, body: Any) -> Reply:
        if self.steps and self.is_main(body):
            self.main.append(self.fake.requests[-1])
            return self.steps.pop(0)(path, body)
        return self.fake.default_reply(path, body)


# ------------------------------------------------------------------ one run
@dataclass
class AgentRun:
    agent: str  # "OpenClaw"
    protocol: str  # the agent's client protocol: "openai" | "anthropic"
    gw: Gateway
    gw_name: str  # "oup" | "aup"
    fake: FakeUpstream
    ingress: Ingress
    key: str
    cwd: Path
    home: Path
    run: Run | None = None
    said: str | None = None  # the reply text, where the agent's stdout is more than that (JSON)

    @property
    def openai_base(self) -> str:
        """What the agent is configured with (the ingress in front of the gateway's /step_plan/v1)."""
        return f"{self.ingress.url}/step_plan/v1"

    @property
    def anthropic_base(self) -> str:
        return f"{self.ingress.url}/step_plan"

    @property
    def file(self) -> Path:
        return self.cwd / FILE_NAME

    @property
    def upstream_posts(self) -> list[Recorded]:
        return [r for r in self.fake.requests if r.path in ("/v1/chat/completions", "/v1/messages")]

    def agent_posts(self, protocol: str | None = None) -> list[Exchange]:
        return self.ingress.posts(PATHS[protocol or self.protocol])

    def execute(self, argv: list[str], env: dict[str, str]) -> Run:
        """Run the agent in the workdir; a run that times out fails with :meth:`why` too."""
        try:
            self.run = run(argv, cwd=self.cwd, env=env)
        except AssertionError as exc:  # timed out (the process group is killed)
            raise AssertionError(f"{self.why('timed out')}\n{exc}") from None
        return self.run

    # ---------------------------------------------------------------- failure message
    def why(self, what: str = "") -> str:
        lines = [f"[{self.agent} · {self.protocol} client protocol · {self.gw_name} gateway] {what}".rstrip()]
        if self.run is not None:
            lines.append(f"$ {' '.join(self.run.argv)} → rc={self.run.returncode}")
        sent = [x for x in self.ingress.exchanges if x.method == "POST"]
        failed = [x for x in sent if x.status != 200]
        lines.append(f"agent → gateway: {len(sent)} POSTs "
                     f"{[(x.path, x.status) for x in sent]}")
        if sent:
            lines.append("request the agent choked on: " if failed else "last request the agent sent: ")
            lines.append((failed or sent)[-1].summary())
        ups = self.upstream_posts
        lines.append(f"gateway → fake upstream: {len(ups)} requests {[r.path for r in ups]}")
        if ups:
            lines.append(f"last upstream request body: {_cut(json.dumps(ups[-1].body), 2000)}")
        if self.run is not None:
            lines.append(f"agent stderr (tail):\n{self.run.stderr[-2500:]}")
            if self.said is not None:
                lines.append(f"agent's reply: {self.said[-1500:]!r}")
            else:
                lines.append(f"agent stdout (tail):\n{self.run.stdout[-1500:]}")
        return "\n".join(lines)

    # ---------------------------------------------------------------- common checks
    def check_finished(self, answer: str, output: str | None = None) -> None:
        """The agent exited 0 and printed ``answer``; every call it made went through."""
        assert self.run is not None
        assert self.run.returncode == 0, self.why("the agent failed")
        text = self.run.stdout if output is None else output
        assert answer in text, self.why(f"the agent did not print {answer!r}")
        sent = self.agent_posts()
        assert sent, self.why(f"the agent sent nothing to {PATHS[self.protocol]}")
        other = "anthropic" if self.protocol == "openai" else "openai"
        assert not self.agent_posts(other), self.why(f"the agent used {PATHS[other]} too")
        bad = [x for x in self.ingress.exchanges if x.method == "POST" and x.status != 200]
        assert not bad, self.why("the gateway refused a request")

    def tool_round_trip(self, script: Script, tool: str, args: dict[str, Any]) -> str:
        """The second main request carries the agent's echo of the scripted call (same id, name
        and arguments) and the tool's result; returns the result's text."""
        assert len(script.main) == 2 and not script.steps, self.why(f"{len(script.main)} main requests, expected 2")
        body = self.main_request(script, 1)
        try:
            call_id, echoed, result = tool_round_trip(body, tool)
        except (AssertionError, KeyError, TypeError) as exc:
            raise AssertionError(self.why(f"the tool round trip is not in the second request: {exc!r}")) from None
        assert call_id == CALL_ID, self.why(f"call id {call_id!r} came back instead of {CALL_ID!r}")
        assert echoed == args, self.why(f"arguments {echoed!r} came back instead of {args!r}")
        assert FILE_TEXT in result, self.why(f"the tool result lacks the file's text: {result[:800]!r}")
        return result

    def main_request(self, script: Script, index: int = 0) -> dict[str, Any]:
        assert len(script.main) > index, self.why(f"the upstream got {len(script.main)} main requests")
        body = script.main[index].body
        assert isinstance(body, dict), self.why()
        upstream_path = "/v1/messages" if self.gw_name == "aup" else "/v1/chat/completions"
        assert script.main[index].path == upstream_path, self.why(f"upstream path {script.main[index].path}")
        return body


AgentRunFactory = Callable[..., AgentRun]  # the ``agent_run`` fixture: agent name, protocol → an AgentRun


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


# ------------------------------------------------------------------ what a request carries
def tool_names(body: dict[str, Any]) -> set[str]:
    """Tool names in an upstream request, OpenAI (``function.name``) or Anthropic (``name``) shaped."""
    return {t["function"]["name"] if "function" in t else t["name"] for t in body.get("tools") or []}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(p.get("text", p.get("content", ""))) for p in content if isinstance(p, dict))
    return ""


def _turns(msgs: list[dict[str, Any]]) -> str:
    """A one-line sketch of a conversation, for failure messages."""
    out = []
    for m in msgs:
        c = m.get("content")
        if m.get("tool_calls"):
            out.append(f"{m['role']}:tool_calls{[(t['id'], t['function']['name']) for t in m['tool_calls']]}")
        elif isinstance(c, list):
            out.append(f"{m['role']}:{[(b.get('type'), b.get('id') or b.get('tool_use_id')) for b in c]}")
        else:
            out.append(f"{m['role']}{'(' + m['tool_call_id'] + ')' if m.get('tool_call_id') else ''}")
    return " | ".join(out)


def tool_round_trip(body: dict[str, Any], name: str) -> tuple[str, dict[str, Any], str]:
    """In a follow-up upstream request: the echoed call of tool ``name`` (its id and arguments)
    and the text of the result that answers it, OpenAI- or Anthropic-shaped."""
    msgs = body["messages"]
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        for tc in m.get("tool_calls") or []:  # OpenAI
            if tc["function"]["name"] == name:
                results = [r for r in msgs[i + 1:] if r["role"] == "tool" and r.get("tool_call_id") == tc["id"]]
                assert len(results) == 1, f"{len(results)} tool results for {tc['id']}: {_turns(msgs)}"
                return tc["id"], json.loads(tc["function"]["arguments"]), _text(results[0]["content"])
        for b in m["content"] if isinstance(m.get("content"), list) else []:  # Anthropic
            if b.get("type") == "tool_use" and b["name"] == name:
                reply = msgs[i + 1] if i + 1 < len(msgs) else {"role": "none", "content": []}
                results = [r for r in reply["content"] if isinstance(r, dict)
                           and r.get("type") == "tool_result" and r["tool_use_id"] == b["id"]]
                assert reply["role"] == "user" and len(results) == 1, f"no tool_result for {b['id']}: {_turns(msgs)}"
                return b["id"], b["input"], _text(results[0].get("content"))
    raise AssertionError(f"no assistant turn calls {name}: {_turns(msgs)}")

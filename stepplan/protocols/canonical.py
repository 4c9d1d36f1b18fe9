"""The one internal representation every protocol codec and engine speaks.

Wire formats (OpenAI chat, Anthropic messages, upstream dialects) are decoded into
these types and encoded from them; nothing else crosses module boundaries.

Conventions:
- Tool results live in ``user`` messages as :class:`ToolResult` blocks (Anthropic's
  shape); the OpenAI codec turns them into ``role: "tool"`` messages and back.
- ``system`` holds the leading system prompt; a ``system`` message that appears in the
  middle or at the end of a conversation stays in ``messages`` with role ``system``.
- Usage counts are split so that no codec has to guess: ``input`` never includes
  cached tokens, ``output`` always includes reasoning tokens.
- ``cache`` on a block or tool is the client's prompt-cache breakpoint: ``False`` none,
  ``True`` a breakpoint (Anthropic ``{"type": "ephemeral"}``), a string a breakpoint with
  that time to live (``"1h"``, ``"5m"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
Cache = bool | str  # see the module docstring
StopReason = Literal["end_turn", "max_tokens", "tool_use", "stop_sequence", "content_filter", "error"]


# --------------------------------------------------------------------------- blocks
@dataclass(slots=True)
class Text:
    text: str
    cache: Cache = False  # the client marked this block for prompt caching


@dataclass(slots=True)
class Image:
    url: str | None = None  # http(s) URL
    data: str | None = None  # base64 payload (no data: prefix)
    media_type: str | None = None
    detail: str | None = None
    cache: Cache = False

    def as_url(self) -> str:
        if self.url is not None:
            return self.url
        return f"data:{self.media_type or 'image/png'};base64,{self.data or ''}"


@dataclass(slots=True)
class Video:
    url: str


@dataclass(slots=True)
class Audio:
    data: str
    format: str | None = None


@dataclass(slots=True)
class Document:
    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    text: str | None = None
    cache: Cache = False


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text exactly as produced by the model
    cache: Cache = False


@dataclass(slots=True)
class ToolResult:
    tool_call_id: str
    content: list[Block]
    is_error: bool | None = None  # None: the client did not say
    cache: Cache = False


@dataclass(slots=True)
class Thinking:
    text: str
    signature: str | None = None
    redacted: bool = False  # redacted_thinking: ``text`` holds the opaque data


Block = Text | Image | Video | Audio | Document | ToolCall | ToolResult | Thinking


@dataclass(slots=True)
class Message:
    role: Role
    content: list[Block]


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None
    parameters: dict[str, Any]
    kind: str = "function"  # "function" or a server tool type such as "web_search"
    cache: Cache = False


@dataclass(slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None


@dataclass(slots=True)
class Request:
    model: str
    messages: list[Message]
    system: list[Text] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    stream: bool = False
    include_usage: bool = False  # OpenAI client asked for the usage chunk
    effort: str | None = None
    thinking: bool | None = None  # None: model default; False: client disabled thinking
    thinking_budget: int | None = None
    reasoning_format: str | None = None  # OpenAI client: "general" | "deepseek-style"
    user: str | None = None
    session_id: str | None = None  # from client headers/metadata, for routing stickiness


# --------------------------------------------------------------------------- usage
@dataclass(slots=True)
class Usage:
    """Token counts of one upstream call, split so every field is additive."""

    input: int = 0  # uncached input tokens
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0  # includes reasoning
    reasoning: int = 0
    known: bool = False  # False: no upstream reported usage (yet)
    # False: a running count the upstream may still raise (Anthropic's ``message_start`` carries a
    # placeholder ``output_tokens``); only usage the upstream marks as its last word is billed as is.
    final: bool = True

    @property
    def prompt_total(self) -> int:
        return self.input + self.cache_read + self.cache_write


# --------------------------------------------------------------------------- response
@dataclass(slots=True)
class Response:
    id: str
    model: str  # the model that served it (upstream name)
    content: list[Block]
    stop_reason: StopReason
    usage: Usage
    stop_sequence: str | None = None


# --------------------------------------------------------------------------- stream events
@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str


@dataclass(slots=True)
class ThinkingSignature:
    signature: str


@dataclass(slots=True)
class RedactedThinking:
    """A whole ``redacted_thinking`` block (opaque, encrypted reasoning) from an Anthropic upstream."""

    data: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int  # position among this response's tool calls (0, 1, ...)
    id: str | None = None  # set on the first delta of a call
    name: str | None = None
    arguments: str = ""  # a fragment of the JSON arguments


@dataclass(slots=True)
class Finish:
    reason: StopReason
    stop_sequence: str | None = None


@dataclass(slots=True)
class UsageUpdate:
    """The usage known so far. The last one an engine yields is the upstream's last word only
    when ``usage.final`` is set; otherwise the pipeline bills at least what it saw delivered."""

    usage: Usage


Event = TextDelta | ThinkingDelta | ThinkingSignature | RedactedThinking | ToolCallDelta | Finish | UsageUpdate

"""Prompt caching as an Anthropic-protocol upstream does it, simplified for the fake upstream.

A request's prompt is a sequence of segments in Anthropic's order: tools, system blocks, then
each message's content blocks (a tool result's inner blocks before the result itself). A
segment costs ``ceil(len(json) / 4)`` tokens, its ``cache_control`` left out. A block that
carries ``cache_control`` is a breakpoint: the prefix ending there is written to the cache.
A later request reads from the cache the longest of its prefixes that ended at a breakpoint
of an earlier request; what it writes is the rest up to its own last breakpoint.

More than :data:`MAX_BREAKPOINTS` breakpoints in one request is Anthropic's 400.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

MAX_BREAKPOINTS = 4


class TooManyBreakpoints(ValueError):
    pass


@dataclass(frozen=True)
class Prefix:
    digest: bytes
    tokens: int  # tokens of the prompt up to and including this segment
    breakpoint: bool  # the segment carried cache_control


def _strip(block: dict[str, Any], *drop: str) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k != "cache_control" and k not in drop}


def segments(body: dict[str, Any]) -> Iterator[tuple[Any, bool]]:
    """(segment without cache_control, is a breakpoint), in prompt order."""
    for tool in body.get("tools") or ():
        yield _strip(tool), "cache_control" in tool
    system = body.get("system")
    if isinstance(system, str):
        yield {"type": "text", "text": system}, False
    else:
        for block in system or ():
            yield _strip(block), "cache_control" in block
    for m in body.get("messages") or ():
        content = m.get("content")
        if isinstance(content, str):
            yield {"role": m.get("role"), "text": content}, False
            continue
        for block in content or ():
            inner = block.get("content")
            if isinstance(inner, list):
                for x in inner:
                    yield {"role": m.get("role"), **_strip(x)}, "cache_control" in x
                yield {"role": m.get("role"), **_strip(block, "content")}, "cache_control" in block
            else:
                yield {"role": m.get("role"), **_strip(block)}, "cache_control" in block


def prefixes(body: dict[str, Any]) -> list[Prefix]:
    """Every prefix of the prompt, shortest first."""
    out: list[Prefix] = []
    h = hashlib.blake2b(digest_size=16)
    tokens = 0
    for seg, mark in segments(body):
        raw = orjson.dumps(seg, option=orjson.OPT_SORT_KEYS)
        h.update(len(raw).to_bytes(8, "little") + raw)
        tokens += -(-len(raw) // 4)
        out.append(Prefix(h.copy().digest(), tokens, mark))
    return out


def tokens_through(body: dict[str, Any], match: Callable[[dict[str, Any]], bool]) -> int:
    """The tokens of the prompt up to and including the last segment ``match`` accepts."""
    found = 0
    for (seg, _), p in zip(segments(body), prefixes(body), strict=True):
        if match(seg):
            found = p.tokens
    return found


def tokens_to_last_breakpoint(body: dict[str, Any]) -> int:
    """The tokens a request's own breakpoints make cacheable (0 without any)."""
    return max((p.tokens for p in prefixes(body) if p.breakpoint), default=0)


class PromptCache:
    """What an upstream with prompt caching remembers across requests."""

    def __init__(self) -> None:
        self.cached: dict[bytes, int] = {}  # digest of a prefix that ended at a breakpoint → its tokens

    def observe(self, body: dict[str, Any]) -> dict[str, int]:
        """Anthropic usage (without output) for a request; remembers its breakpoints."""
        ps = prefixes(body)
        marks = [p for p in ps if p.breakpoint]
        if len(marks) > MAX_BREAKPOINTS:
            raise TooManyBreakpoints(f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be "
                                     f"provided. Found {len(marks)}.")
        total = ps[-1].tokens if ps else 0
        read = max((p.tokens for p in ps if p.digest in self.cached), default=0)
        write = max(0, (marks[-1].tokens if marks else 0) - read)
        for p in marks:
            self.cached[p.digest] = p.tokens
        return {"input_tokens": total - read - write, "cache_read_input_tokens": read,
                "cache_creation_input_tokens": write}

"""Cross-protocol streaming translation throughput on one core (no network).

Each path runs the gateway's real per-stream objects over a recorded-shape upstream stream:
upstream SSE bytes → ``SSEParser`` → upstream ``StreamDecoder`` → canonical events →
client ``StreamEncoder`` → client SSE bytes, for the four client/upstream pairs.

    python bench/micro/translation.py [--events 2000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import orjson

from stepplan.protocols import anthropic_response as ar
from stepplan.protocols import openai_response as orr
from stepplan.reasoning import Signer
from stepplan.streaming.sse import SSEParser

SIGNER = Signer(b"bench-secret")


def openai_upstream(n: int) -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"

    parts = [chunk({"role": "assistant", "content": ""})]
    parts += [chunk({"reasoning_content": "think "}) for _ in range(n // 4)]
    parts += [chunk({"content": "word "}) for _ in range(n // 2)]
    parts.append(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "Read", "arguments": ""}}]}))
    parts += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"k":1'}}]}) for _ in range(n // 4)]
    parts.append(chunk({}, "tool_calls"))
    parts.append(b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5}}\n\n')
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def anthropic_upstream(n: int) -> bytes:
    def ev(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    d = "content_block_delta"
    parts = [ev("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 10}}}),
             ev("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "thinking", "thinking": ""}})]
    parts += [ev(d, {"type": d, "index": 0, "delta": {"type": "thinking_delta", "thinking": "think "}})
              for _ in range(n // 4)]
    parts += [ev(d, {"type": d, "index": 0, "delta": {"type": "signature_delta", "signature": "s"}}),
              ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
              ev("content_block_start", {"type": "content_block_start", "index": 1,
                                         "content_block": {"type": "text", "text": ""}})]
    parts += [ev(d, {"type": d, "index": 1, "delta": {"type": "text_delta", "text": "word "}}) for _ in range(n // 2)]
    parts += [ev("content_block_stop", {"type": "content_block_stop", "index": 1}),
              ev("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
                  "type": "tool_use", "id": "c", "name": "Read", "input": {}}})]
    parts += [ev(d, {"type": d, "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"k":1'}})
              for _ in range(n // 4)]
    parts += [ev("content_block_stop", {"type": "content_block_stop", "index": 2}),
              ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                   "usage": {"output_tokens": 5}}),
              ev("message_stop", {"type": "message_stop"})]
    return b"".join(parts)


def run(raw: bytes, upstream: str, client: str) -> tuple[int, int]:
    parser = SSEParser()
    dec: Any = orr.StreamDecoder([]) if upstream == "openai" else ar.StreamDecoder()
    enc: Any = (orr.StreamEncoder("id", "m", True) if client == "openai" else ar.StreamEncoder("id", "m", SIGNER))
    out = enc.start() if client == "openai" else enc.start(None)
    n_out = len(out)
    events = 0
    for i in range(0, len(raw), 1400):  # network-sized reads
        for _, data in parser.feed(raw[i:i + 1400]):
            if data == b"[DONE]":
                continue
            for e in dec.feed(orjson.loads(data)):
                events += 1
                n_out += len(enc.feed(e))
    for e in dec.close():
        events += 1
        n_out += len(enc.feed(e))
    n_out += len(enc.end())
    return events, n_out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    sources: dict[str, Callable[[int], bytes]] = {"openai": openai_upstream, "anthropic": anthropic_upstream}
    print("| client ← upstream | canonical events/s (one core) | µs per event |")
    print("|---|---|---|")
    for client in ("anthropic", "openai"):
        for upstream in ("openai", "anthropic"):
            raw = sources[upstream](args.events)
            run(raw, upstream, client)  # warm-up
            t0 = time.process_time()
            total = 0
            for _ in range(args.repeat):
                total += run(raw, upstream, client)[0]
            cpu = time.process_time() - t0
            print(f"| {client} ← {upstream} | {total / cpu:,.0f} | {cpu / total * 1e6:.2f} |")


if __name__ == "__main__":
    main()

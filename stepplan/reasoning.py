"""Reasoning across turns: gateway-signed thinking blocks and a replay record.

Thinking text sent to an Anthropic client carries a signature made here
(``sp1.<HMAC-SHA256 over the text>``, see :class:`Signer`), so when the client echoes the block back we
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
    """Signs thinking text for clients; a signature can carry the upstream's own one.

    Format: ``sp1.<mac>`` for reasoning from an upstream that does not sign, or
    ``sp1.<mac>.<upstream signature, base64url>`` when an Anthropic-protocol upstream
    signed the block itself; the MAC then covers both, so neither can be swapped.
    """

    def __init__(self, secret: bytes):
        self.secret = secret

    def _mac(self, text: str, upstream: str | None) -> str:
        acc = self.accumulator()
        acc.update(text)
        return acc.mac(upstream)

    def accumulator(self) -> SignatureAccumulator:
        """Sign a thinking block as it streams, without keeping its text."""
        return SignatureAccumulator(hmac.new(self.secret, digestmod=hashlib.sha256))

    def sign(self, text: str, upstream: str | None = None) -> str:
        acc = self.accumulator()
        acc.update(text)
        return acc.signature(upstream)

    def open(self, text: str, signature: str | None) -> tuple[bool, str | None]:
        """``(ours, upstream_signature)``: whether we signed ``text``, and what the upstream had signed."""
        if not signature or not signature.startswith(SIG_PREFIX):
            return False, None
        mac, _, tag = signature[len(SIG_PREFIX):].partition(".")
        upstream: str | None = None
        if tag:
            try:
                upstream = base64.urlsafe_b64decode(tag + "=" * (-len(tag) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                return False, None
        if not hmac.compare_digest(self._mac(text, upstream).encode(), mac.encode()):
            return False, None
        return True, upstream or None

    def verify(self, text: str, signature: str | None) -> bool:
        return self.open(text, signature)[0]


class SignatureAccumulator:
    __slots__ = ("_h",)

    def __init__(self, h: hmac.HMAC):
        self._h = h

    def update(self, text: str) -> None:
        self._h.update(text.encode())

    def mac(self, upstream: str | None) -> str:
        h = self._h.copy()
        up = (upstream or "").encode()
        h.update(b"\x00" + up + len(up).to_bytes(8, "big"))  # parses uniquely from the end
        return base64.urlsafe_b64encode(h.digest()).decode().rstrip("=")

    def signature(self, upstream: str | None = None) -> str:
        sig = SIG_PREFIX + self.mac(upstream)
        if upstream:
            sig += "." + base64.urlsafe_b64encode(upstream.encode()).decode().rstrip("=")
        return sig


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

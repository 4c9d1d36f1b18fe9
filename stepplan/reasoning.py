"""Reasoning across turns: gateway-signed thinking blocks and a replay record.

Thinking text sent to an Anthropic client carries a signature made here
(``sp1.<HMAC-SHA256 over the text>``, see :class:`Signer`), so when the client echoes the block back we
know the text is ours and can restore it upstream as ``reasoning_content``. For
clients that drop reasoning between turns, :class:`ReasoningStore` remembers the
reasoning that preceded each tool call for a while, in the database so that every worker (and
the next process after a restart) can replay it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from typing import Any

from .protocols.canonical import Message, Thinking, ToolCall

log = logging.getLogger("stepplan.reasoning")

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
    """Tool-call id → the reasoning that led to it: a bounded, time-limited map in this process,
    backed (when started with a database) by ``reasoning_records``, which every worker shares and
    which outlives restarts. Writes are batched off the request path (a call that made tool calls
awaits its record before its last byte, like its ledger entry); a request whose assistant
    turns have tool calls unknown here looks them up once (:meth:`prefetch`) before the upstream
    call, and the answer (found or not) is cached here."""

    def __init__(self, max_entries: int = 20_000, ttl: float = 6 * 3600, miss_ttl: float = 60.0):
        self.max_entries = max_entries
        self.ttl = ttl
        self.miss_ttl = miss_ttl  # a lookup that found nothing is not repeated for this long
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._sessions: Any = None
        self._pending: list[dict[str, Any]] = []
        self._waiters: list[asyncio.Future[None]] = []  # calls waiting for their pending records
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.stats = {"saved": 0, "lookups": 0, "found": 0, "write_errors": 0}

    # ------------------------------------------------------------------ in-process map
    def _put(self, call_id: str, expiry: float, reasoning: str) -> None:
        self._items[call_id] = (expiry, reasoning)
        self._items.move_to_end(call_id)

    def _trim(self) -> None:
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def remember(self, calls: list[str], reasoning: str) -> asyncio.Future[None] | None:
        """Record the reasoning behind ``calls``. With a shared record, returns a future that
        completes once the record is written (or could not be): a call awaits it before its last
        byte, so the client's next turn finds it on any worker. ``None`` when nothing is written."""
        if not calls:
            return None
        mono = time.monotonic()
        if not reasoning:  # known to have none: no lookup for these ids here
            for call_id in calls:
                self._put(call_id, mono + self.miss_ttl, "")
            self._trim()
            return None
        expiry = mono + self.ttl
        for call_id in calls:
            self._put(call_id, expiry, reasoning)
        self._trim()
        if self._wake is None:
            return None
        wall = int(time.time() + self.ttl)
        self._pending.extend({"call_id": c, "reasoning": reasoning, "expires_at": wall} for c in calls)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        self._wake.set()
        return done

    def restore(self, calls: list[ToolCall]) -> str | None:
        now = time.monotonic()
        for tc in calls:
            hit = self._items.get(tc.id)
            if hit is not None and hit[0] > now and hit[1]:
                return hit[1]
        return None

    def unknown(self, messages: list[Message]) -> list[str]:
        """Tool-call ids of assistant turns that carry no reasoning and are not known here."""
        now = time.monotonic()
        out: list[str] = []
        for m in messages:
            if m.role != "assistant":
                continue
            calls = [b.id for b in m.content if isinstance(b, ToolCall) and b.id]
            if not calls or any(isinstance(b, Thinking) for b in m.content):
                continue
            for call_id in calls:
                hit = self._items.get(call_id)
                if hit is None or hit[0] <= now:
                    out.append(call_id)
        return out

    # ------------------------------------------------------------------ the shared record
    @property
    def shared(self) -> bool:
        return self._wake is not None

    async def start(self, sessions: Any) -> None:
        self._sessions = sessions
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._write_loop(), name="reasoning-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._flush()
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters = []
        self._wake = None

    async def prefetch(self, call_ids: list[str]) -> None:
        """Look up ids not known here in the shared record (at most 500 at a time), and cache the answers."""
        if self._sessions is None or not call_ids:
            return
        from .store import reasoning_records

        ids = list(dict.fromkeys(call_ids))[-500:]  # the latest turns matter most
        self.stats["lookups"] += 1
        try:
            async with self._sessions() as s:
                found = await reasoning_records.load(s, ids, int(time.time()))
        except Exception:  # the record is a help, not a requirement: go on without it
            log.warning("reasoning record lookup failed", exc_info=True)
            return
        mono, wall = time.monotonic(), time.time()
        for call_id in ids:
            hit = found.get(call_id)
            if hit is not None:
                self._put(call_id, mono + max(0.0, hit[1] - wall), hit[0])
            else:
                self._put(call_id, mono + self.miss_ttl, "")
        self.stats["found"] += len(found)
        self._trim()

    async def _write_loop(self) -> None:
        assert self._wake is not None
        last_purge = time.monotonic()
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Calls wait for their record before their last byte, so write at once: answers that
            # arrive while a batch is being written share the next transaction (adaptive group commit).
            await asyncio.sleep(0)
            await self._flush()
            if time.monotonic() - last_purge > 600:
                last_purge = time.monotonic()
                await self._purge()

    async def _flush(self) -> None:
        if not self._pending or self._sessions is None:
            return
        from .store import reasoning_records

        batch, self._pending = self._pending, []
        waiters, self._waiters = self._waiters, []
        try:
            for attempt in range(5):
                try:
                    async with self._sessions() as s:
                        await reasoning_records.save(s, batch)
                        await s.commit()
                    self.stats["saved"] += len(batch)
                    return
                except asyncio.CancelledError:
                    self._pending[:0] = batch
                    self._waiters[:0] = waiters
                    waiters = []
                    raise
                except Exception:
                    if attempt == 4:
                        self.stats["write_errors"] += 1
                        log.warning("could not save %d reasoning records; other workers will not replay them",
                                    len(batch), exc_info=True)
                        return
                    await asyncio.sleep(0.01 * 2**attempt)
        finally:
            for w in waiters:  # written or given up: a call never waits on the record for ever
                if not w.done():
                    w.set_result(None)

    async def _purge(self) -> None:
        from .store import reasoning_records

        try:
            async with self._sessions() as s:
                await reasoning_records.purge(s, int(time.time()))
                await s.commit()
        except Exception:
            log.warning("could not purge expired reasoning records", exc_info=True)

"""Sealed reasoning for Responses clients: the ``encrypted_content`` of a ``reasoning`` item.

A Responses client that does not store responses server-side (Codex sends ``store: false`` with
``include: ["reasoning.encrypted_content"]``) re-sends every earlier ``reasoning`` item on the next
turn. The gateway puts in that item a sealed copy of the upstream's reasoning text (and, for
Anthropic-protocol upstreams, the upstream's own thinking signature, or a whole redacted_thinking
payload), so the exact reasoning reaches the upstream again; clients cannot read or forge it.

Format: ``spr1.<base64url(key id (4) | nonce (12) | AES-256-GCM ciphertext and tag)>``; the
plaintext is zlib-compressed JSON ``{"t": text, "s": signature or null, "r": redacted}``.

Keys are derived from the gateway secret (``server.secret`` / ``STEPPLAN_SECRET``, or the one made
and kept in the database) with HMAC-SHA256 and a purpose label, so the thinking-signature key
and this key never coincide. Rotation: put the old secret in ``[responses] previous_secrets``;
items sealed under it still open (and are sealed again under the new key when the gateway
answers). An item that does not open (unknown key, altered, not ours) is dropped by the caller,
never an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import zlib
from collections.abc import Iterable

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .protocols.canonical import Thinking

PREFIX = "spr1."
_LABEL = b"stepplan/responses/reasoning/v1"
_AAD = b"stepplan.responses.reasoning"
_MAX_PLAIN = 16 * 1024 * 1024  # a decompression bomb stops here


def _key(secret: bytes) -> bytes:
    return hmac.new(secret, _LABEL, hashlib.sha256).digest()


def _kid(key: bytes) -> bytes:
    return hashlib.sha256(b"kid" + key).digest()[:4]


class Sealer:
    """Seals reasoning with the current key; opens with the current or a previous one."""

    def __init__(self, secret: bytes, previous: Iterable[bytes] = ()):
        key = _key(secret)
        self._kid = _kid(key)
        self._aead = AESGCM(key)
        self._keys: dict[bytes, AESGCM] = {self._kid: self._aead}
        for old in previous:
            k = _key(old)
            self._keys.setdefault(_kid(k), AESGCM(k))

    def seal(self, text: str, signature: str | None = None, redacted: bool = False) -> str:
        plain = zlib.compress(orjson.dumps({"t": text, "s": signature, "r": redacted}), 1)
        nonce = os.urandom(12)
        blob = self._kid + nonce + self._aead.encrypt(nonce, plain, _AAD)
        return PREFIX + base64.urlsafe_b64encode(blob).decode().rstrip("=")

    def open(self, token: str) -> Thinking | None:
        """The reasoning sealed in ``token``, or None when it is not a token this gateway can open."""
        if not token.startswith(PREFIX):
            return None
        body = token[len(PREFIX):]
        try:
            blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (ValueError, binascii.Error):
            return None
        aead = self._keys.get(blob[:4])
        if aead is None or len(blob) < 4 + 12 + 16:
            return None
        try:
            plain = aead.decrypt(blob[4:16], blob[16:], _AAD)
            d = zlib.decompressobj()
            raw = d.decompress(plain, _MAX_PLAIN)
            value = orjson.loads(raw)
        except (InvalidTag, zlib.error, orjson.JSONDecodeError):
            return None
        if not isinstance(value, dict) or not isinstance(value.get("t"), str):
            return None
        sig = value.get("s")
        return Thinking(value["t"], signature=sig if isinstance(sig, str) and sig else None,
                        redacted=value.get("r") is True)


__all__ = ["PREFIX", "Sealer"]

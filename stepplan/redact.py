"""Scrubbing secrets from text that leaves the gateway: log lines (stepplan.logs) and error
messages shown to clients (stepplan.errors), which can quote what others sent (an upstream's
error text, a client's value).

Removed: the configured secrets (upstream keys, admin token, signing secret: :func:`add_secrets`,
called when the app is built) wherever they appear, and anything credential-shaped: API keys
(``sk-…``), bearer and basic credentials, and the value after a key-like header or field name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SECRET_PATTERNS = [
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),  # stepplan keys (sk-step-…) and most providers' keys
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{6,}"),
    # a header name and its value; not the scheme word of "Authorization: Bearer …" (the bearer rule takes the value)
    re.compile(r"(?i)\b(x-api-key|api[_-]?key|authorization|x-admin-token)(\W{1,4})(?!(?:bearer|basic)\b)"
               r"[A-Za-z0-9._~+/=\-]{6,}"),
]
_secrets: list[str] = []
REDACTED = "[redacted]"


def add_secrets(values: Iterable[str | None]) -> None:
    """Configured secrets (upstream keys, admin token, signing secret) never appear in a log line."""
    for v in values:
        if v and len(v) >= 4 and v not in _secrets:
            _secrets.append(v)
    _secrets.sort(key=len, reverse=True)


def redact(text: str) -> str:
    for s in _secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    text = _SECRET_PATTERNS[0].sub(REDACTED, text)
    text = _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


__all__ = ["REDACTED", "add_secrets", "redact"]

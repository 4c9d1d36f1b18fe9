"""Limits on what one request body may hold, enforced by the request codecs (issue 16 §4).

The body as a whole is bounded by ``[server] max_body_bytes`` (413) and its nesting by
``api.common.MAX_DEPTH``; these bound what is inside it, each with a 400 naming the field and
the limit:

* ``max_messages``: items of ``messages`` (chat, Messages) or ``input`` (Responses);
* ``max_tools``: items of ``tools`` (a Responses namespace's tools count too);
* ``max_content_parts``: parts of one message's content, one tool result's content, ``stop``;
* ``max_string_chars``: characters of any one string the codecs read (texts, names, ids, URLs,
  base64 data). Strings inside objects forwarded as they are (tool schemas, tool-call inputs)
  are bounded by the body limit only.

The values are process-wide: :func:`configure` sets them from ``[server]`` when the app is built
(``create_app``); the codecs read :data:`current`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InputLimits:
    max_messages: int = 20_000
    max_tools: int = 1_024
    max_content_parts: int = 5_000
    max_string_chars: int = 16 * 1024 * 1024

    def setting(self, name: str) -> str:
        """How the limit ``name`` is shown in errors: its value and the key that sets it."""
        return f"{getattr(self, name)} ([server] {name})"


current = InputLimits()


def configure(limits: InputLimits) -> None:
    global current
    current = limits


__all__ = ["InputLimits", "configure", "current"]

"""Small typed readers for wire JSON that fail with an error naming the field."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import InvalidRequest
from . import limits

INT64 = 2**63  # integers the gateway forwards must fit 64 bits (JSON encoders and upstreams refuse more)


def obj(v: Any, name: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise InvalidRequest(f"'{name}' must be an object", param=name)
    return v


def lst(v: Any, name: str, limit: str | None = None) -> list[Any]:
    """An array; with ``limit`` (a field of :class:`~.limits.InputLimits`), at most that many items."""
    if not isinstance(v, list):
        raise InvalidRequest(f"'{name}' must be an array", param=name)
    if limit is not None and len(v) > getattr(limits.current, limit):
        raise InvalidRequest(f"'{name}' has {len(v)} items; the limit is {limits.current.setting(limit)}",
                             param=name)
    return v


def string(v: Any, name: str) -> str:
    if not isinstance(v, str):
        raise InvalidRequest(f"'{name}' must be a string", param=name)
    if len(v) > limits.current.max_string_chars:
        raise InvalidRequest(f"'{name}' is {len(v)} characters long; the limit is "
                             f"{limits.current.setting('max_string_chars')}", param=name)
    return v


def opt_str(d: dict[str, Any], key: str, name: str | None = None) -> str | None:
    v = d.get(key)
    if v is None:
        return None
    return string(v, name or key)


def opt_bool(d: dict[str, Any], key: str, name: str | None = None) -> bool | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise InvalidRequest(f"'{name or key}' must be a boolean", param=name or key)
    return v


def opt_int(d: dict[str, Any], key: str, lo: int | None = None, hi: int | None = None,
            name: str | None = None) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    n = name or key
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer() and abs(v) < INT64:
            v = int(v)
        else:
            raise InvalidRequest(f"'{n}' must be an integer" + (" within the 64-bit range" if isinstance(v, float)
                                                                else ""), param=n)
    if not -INT64 <= v < INT64:
        raise InvalidRequest(f"'{n}' must be an integer within the 64-bit range", param=n)
    if lo is not None and v < lo:
        raise InvalidRequest(f"'{n}' must be >= {lo}", param=n)
    if hi is not None and v > hi:
        raise InvalidRequest(f"'{n}' must be <= {hi}", param=n)
    return v


def opt_num(d: dict[str, Any], key: str, lo: float | None = None, hi: float | None = None,
            name: str | None = None) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    n = name or key
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidRequest(f"'{n}' must be a number", param=n)
    if lo is not None and v < lo:
        raise InvalidRequest(f"'{n}' must be between {lo} and {hi}", param=n)
    if hi is not None and v > hi:
        raise InvalidRequest(f"'{n}' must be between {lo} and {hi}", param=n)
    return float(v)


def str_list(v: Any, name: str) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [string(v, name)]
    items = lst(v, name, "max_content_parts")
    for i, s in enumerate(items):
        string(s, f"{name}[{i}]")
    return items


CACHE_TTLS = frozenset({"5m", "1h"})


def cache_mark(d: dict[str, Any]) -> bool | str:
    """A wire object's ``cache_control`` (Anthropic's, also sent on OpenAI content parts by
    clients of OpenRouter-style gateways) as a canonical mark: False, True, or its ttl."""
    cc = d.get("cache_control")
    if cc is None:
        return False
    ttl = cc.get("ttl") if isinstance(cc, dict) else None
    return ttl if isinstance(ttl, str) and ttl in CACHE_TTLS else True


def word_in(v: Any, words: frozenset[str]) -> bool:
    """Whether a client value is one of ``words`` (False for a non-string: a list or an object
    sent where a word belongs must not reach a set look-up, which cannot hash it)."""
    return isinstance(v, str) and v in words


def json_text(v: dict[str, Any], name: str) -> str:
    """A client object as JSON text, or the error naming it (integers beyond 64 bits, nesting
    deeper than the encoder goes)."""
    try:
        return orjson.dumps(v).decode()
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(f"'{name}' cannot be forwarded: {exc}", param=name) from None


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as the object Anthropic's ``tool_use.input`` needs.

    Empty arguments are ``{}``; text that is not a JSON object is kept, not dropped, under
    ``_unparsed_arguments``."""
    if not arguments.strip():
        return {}
    try:
        v = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        v = None
    return v if isinstance(v, dict) else {"_unparsed_arguments": arguments}


def split_data_url(url: str) -> tuple[str | None, str | None]:
    """``data:image/png;base64,XXXX`` → (media_type, data); anything else → (None, None)."""
    if not url.startswith("data:"):
        return None, None
    head, sep, data = url[5:].partition(",")
    if not sep:
        raise InvalidRequest("malformed data URL in image content", param="image_url.url")
    media = head.split(";", 1)[0] or None
    return media, data

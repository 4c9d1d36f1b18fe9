"""Small typed readers for wire JSON that fail with an error naming the field."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import InvalidRequest

INT64 = 2**63  # integers the gateway forwards must fit 64 bits (JSON encoders and upstreams refuse more)


def obj(v: Any, name: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise InvalidRequest(f"'{name}' must be an object", param=name)
    return v


def lst(v: Any, name: str) -> list[Any]:
    if not isinstance(v, list):
        raise InvalidRequest(f"'{name}' must be an array", param=name)
    return v


def string(v: Any, name: str) -> str:
    if not isinstance(v, str):
        raise InvalidRequest(f"'{name}' must be a string", param=name)
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
        return [v]
    items = lst(v, name)
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
    return ttl if ttl in CACHE_TTLS else True


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

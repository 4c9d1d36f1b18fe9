"""Proxy URLs: parsing and display, without the network code (``_proxy.py``), so settings and the
admin view can use them without importing the HTTP client."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

__all__ = ["parse_proxy_url", "proxy_where"]


def parse_proxy_url(url: str) -> tuple[str, int, str | None]:
    """``(host, port, "user:pass" or None)`` of an ``http://[user:pass@]host[:port]`` proxy URL
    (no scheme means http, as for curl; the port defaults to 1080 as for curl). ValueError, whose
    message never contains the password, for anything else."""
    raw = url if "://" in url else f"http://{url}"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise ValueError(f"proxy {_safe(url)!r} is not a valid URL") from None
    if parts.scheme != "http":
        raise ValueError(f"proxy {_safe(url)!r}: only http:// proxies are supported (HTTPS targets are "
                         "tunnelled through them with CONNECT)")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"proxy {_safe(url)!r} must look like http://[user:pass@]host:port")
    creds = None
    if parts.username is not None:
        creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return parts.hostname, port or 1080, creds


def proxy_where(url: str | None) -> str | None:
    """``host:port`` of a member's proxy for display (admin API), None when direct; never the credentials."""
    if not url:
        return None
    try:
        host, port, _ = parse_proxy_url(url)
    except ValueError:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _safe(url: str) -> str:
    """The URL without its userinfo (for messages)."""
    scheme, sep, rest = url.rpartition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"

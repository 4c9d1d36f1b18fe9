"""Settings: built once from a TOML file and the environment, then passed down.

No module reads the environment at import time; :func:`load_settings` is the only
place that does.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import Catalog

PROTOCOLS = ("openai", "anthropic", "local")


@dataclass(slots=True)
class UpstreamConfig:
    name: str
    protocol: str
    base_url: str = ""
    api_key: str | None = None
    model_path: str | None = None
    connect_timeout: float = 10.0
    first_byte_timeout: float = 120.0
    idle_timeout: float = 120.0
    total_timeout: float = 1800.0
    max_retries: int = 2
    max_connections: int = 10_000  # pooled connections to this upstream (open streams hold one each)
    headers: dict[str, str] = field(default_factory=dict)
    # The upstream wants earlier reasoning sent back on assistant turns (DeepSeek thinking mode).
    replay_reasoning: bool = True
    n_ctx: int = 4096
    n_threads: int | None = None


@dataclass(slots=True)
class RouterConfig:
    pro_engine: str = "deepseek-v4-pro"
    flash_engine: str = "step-3.7-flash"
    pro_share: float = 0.3
    threshold: float | None = None  # overrides pro_share when set
    max_tokens_cap: int = 250_000
    sticky_seconds: float = 1800.0


@dataclass(slots=True)
class Settings:
    database_url: str = "sqlite:///./stepplan.db"
    redis_url: str | None = None
    upstreams: dict[str, UpstreamConfig] = field(default_factory=dict)
    default_upstream: str = "local"
    catalog: Catalog = field(default_factory=Catalog.build)
    router: RouterConfig = field(default_factory=RouterConfig)
    billing: dict[str, Any] = field(default_factory=dict)
    responses: dict[str, Any] = field(default_factory=dict)  # [responses]: retention, previous secrets
    admin_token: str | None = None
    secret: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_concurrency: int = 10_000
    # client connections (stepplan.http_guard): header count/size limits, header and body timeouts
    max_headers: int = 100
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 15.0
    body_timeout: float = 120.0
    log_level: str = "info"
    config_path: str | None = None
    # observability (docs/operating.md)
    metrics: bool = True  # [server] metrics: record Prometheus metrics and serve /metrics
    metrics_port: int | None = None  # [server] metrics_port: serve /metrics there (no token) instead of the main port
    metrics_host: str = "127.0.0.1"  # [server] metrics_host: address the metrics port binds to
    metrics_account_labels: bool = False  # [server] metrics_account_labels: opt-in per-account/key series
    log_format: str = "text"  # [server] log_format: "text" | "json"

    def upstream_for(self, model_id: str) -> UpstreamConfig:
        spec = self.catalog.models.get(model_id)
        name = (spec.upstream if spec else None) or self.default_upstream
        return self.upstreams[name]


def _upstream(name: str, raw: dict[str, Any], env: dict[str, str]) -> UpstreamConfig:
    protocol = raw.get("protocol", "openai")
    if protocol not in PROTOCOLS:
        raise ValueError(f"upstreams.{name}.protocol must be one of {PROTOCOLS}, not {protocol!r}")
    api_key = raw.get("api_key")
    if raw.get("api_key_env"):
        api_key = env.get(raw["api_key_env"], api_key)
    known = {f for f in UpstreamConfig.__dataclass_fields__} | {"api_key_env"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"upstreams.{name}: unknown keys {sorted(unknown)}")
    values = {k: v for k, v in raw.items() if k not in ("api_key_env", "api_key", "protocol")}
    if protocol != "local" and not values.get("base_url"):
        raise ValueError(f"upstreams.{name}.base_url is required for protocol {protocol!r}")
    values["base_url"] = str(values.get("base_url", "")).rstrip("/")
    if protocol != "local":
        _check_http_upstream(name, values["base_url"], values.get("headers", {}), api_key)
    return UpstreamConfig(name=name, protocol=protocol, api_key=api_key, **values)


def _check_http_upstream(name: str, base_url: str, headers: Any, api_key: Any) -> None:
    """Refuse at start-up what the HTTP client would refuse on the first call."""
    from .engines._h1 import parse_base_url, render_headers

    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError(f"upstreams.{name}.headers must be a table of strings")
    if api_key is not None and not isinstance(api_key, str):
        raise ValueError(f"upstreams.{name}.api_key must be a string")
    try:
        parse_base_url(base_url)
        render_headers({**headers, "authorization": api_key or ""})
    except ValueError as exc:
        raise ValueError(f"upstreams.{name}: {exc}") from None


def load_settings(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    path = path or env.get("STEPPLAN_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        raw = tomllib.loads(Path(path).read_text())
    s = Settings(config_path=str(path) if path else None)
    s.database_url = env.get("STEPPLAN_DATABASE_URL") or raw.get("database", {}).get("url") or s.database_url
    s.redis_url = env.get("STEPPLAN_REDIS_URL") or raw.get("redis", {}).get("url") or None
    for name, up in raw.get("upstreams", {}).items():
        s.upstreams[name] = _upstream(name, up, env)
    if not s.upstreams:
        s.upstreams["local"] = UpstreamConfig(name="local", protocol="local")
    server = raw.get("server", {})
    s.default_upstream = server.get("default_upstream") or (
        "local" if "local" in s.upstreams else next(iter(s.upstreams))
    )
    if s.default_upstream not in s.upstreams:
        raise ValueError(f"server.default_upstream {s.default_upstream!r} is not a configured upstream")
    s.catalog = Catalog.build(raw.get("models"))
    for spec in s.catalog.models.values():
        if spec.upstream and spec.upstream not in s.upstreams:
            raise ValueError(f"models.{spec.id}.upstream {spec.upstream!r} is not a configured upstream")
    r = raw.get("router", {})
    s.router = RouterConfig(**r)
    s.billing = raw.get("billing", {})
    s.responses = raw.get("responses", {})
    s.admin_token = env.get("STEPPLAN_ADMIN_TOKEN") or server.get("admin_token")
    s.secret = env.get("STEPPLAN_SECRET") or server.get("secret")
    s.max_body_bytes = int(server.get("max_body_bytes", s.max_body_bytes))
    s.max_concurrency = int(server.get("max_concurrency", s.max_concurrency))
    s.max_headers = int(server.get("max_headers", s.max_headers))
    s.max_header_bytes = int(server.get("max_header_bytes", s.max_header_bytes))
    s.header_timeout = float(server.get("header_timeout", s.header_timeout))
    s.body_timeout = float(server.get("body_timeout", s.body_timeout))
    s.log_level = server.get("log_level", s.log_level)
    _observability(s, server, env)
    return s


def _observability(s: Settings, server: dict[str, Any], env: dict[str, str]) -> None:
    """``[server]`` keys for metrics and logs (env ``STEPPLAN_METRICS=0`` turns metrics off, for benchmarks)."""
    metrics = env.get("STEPPLAN_METRICS")
    s.metrics = server.get("metrics", True) if metrics is None else metrics.lower() not in ("0", "false", "off", "no")
    if not isinstance(s.metrics, bool):
        raise ValueError("server.metrics must be true or false")
    port = server.get("metrics_port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise ValueError(f"server.metrics_port must be a TCP port number, not {port!r}")
    s.metrics_port = port
    s.metrics_host = str(server.get("metrics_host", s.metrics_host))
    s.metrics_account_labels = server.get("metrics_account_labels", False)
    if not isinstance(s.metrics_account_labels, bool):
        raise ValueError("server.metrics_account_labels must be true or false")
    s.log_format = env.get("STEPPLAN_LOG_FORMAT") or server.get("log_format", "text")
    if s.log_format not in ("text", "json"):
        raise ValueError(f"server.log_format must be \"text\" or \"json\", not {s.log_format!r}")

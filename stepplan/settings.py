"""Settings: built once from a TOML file and the environment, then passed down.

No module reads the environment at import time; :func:`load_settings` is the only
place that reads it (the CLI only *writes* ``STEPPLAN_CONFIG`` and ``STEPPLAN_LOG_LEVEL``
for the worker processes it starts, which read them back through here).

The file is loaded by one typed, strict loader: :class:`ConfigFile` is its schema, one typed
dataclass per ``[section]``. Every unknown key, value of the wrong type or bad value stops
start-up with a :class:`ConfigError` naming the file and the key (``router.pro_shar``). A
section's values are checked by its ``check()`` method, if it has one.

Adding a section: write its dataclass (fields with types and defaults, optionally
``check()``), add a field of that type to :class:`ConfigFile` and one of the same name to
:class:`Settings`; :func:`load_settings` copies it over. Nothing else changes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import _SPEC_FIELDS, Catalog, ModelSpec
from .routing.policy import FLASH_ENGINE, PRO_ENGINE

PROTOCOLS = ("openai", "anthropic", "local")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")
LOG_LEVEL_ENV = "STEPPLAN_LOG_LEVEL"  # set by `stepplan serve --log-level` for its workers


class ConfigError(ValueError):
    """A config file (or environment variable) the gateway refuses to start with."""

    def __init__(self, key: str, message: str, path: str | None = None):
        self.key, self.message, self.path = key, message, path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{key}: {message}" if key else f"{where}{message}")

    def within(self, prefix: str = "", path: str | None = None) -> ConfigError:
        """The same error with its key under ``prefix`` and, if given, the file named."""
        key = f"{prefix}.{self.key}" if prefix and self.key else (prefix or self.key)
        return ConfigError(key, self.message, path if path is not None else self.path)


# --------------------------------------------------------------------------------------- sections
@dataclass(slots=True)
class DatabaseConfig:
    url: str | None = None  # STEPPLAN_DATABASE_URL wins


@dataclass(slots=True)
class RedisConfig:
    url: str | None = None  # STEPPLAN_REDIS_URL wins


@dataclass(slots=True)
class ServerConfig:
    default_upstream: str | None = None  # None: "local" if configured, else the first upstream
    admin_token: str | None = None  # STEPPLAN_ADMIN_TOKEN wins
    secret: str | None = None  # STEPPLAN_SECRET wins
    max_body_bytes: int = 32 * 1024 * 1024
    max_concurrency: int = 10_000
    log_level: str = "info"  # `stepplan serve --log-level` wins
    # client connections (stepplan.http_guard): header count/size limits, header and body timeouts
    max_headers: int = 100
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 15.0
    body_timeout: float = 120.0
    # what one request body may hold (stepplan.protocols.limits; docs/security.md): 400 naming the limit
    max_messages: int = 20_000
    max_tools: int = 1_024
    max_content_parts: int = 5_000
    max_string_chars: int = 16 * 1024 * 1024
    # observability (docs/operating.md)
    metrics: bool = True  # record Prometheus metrics and serve /metrics
    metrics_port: int | None = None  # serve /metrics there (no token) instead of on the main port
    metrics_host: str = "127.0.0.1"  # the address the metrics port binds to
    metrics_account_labels: bool = False  # opt-in: per-account and per-key series
    log_format: str = "text"  # "text" | "json"
    # streams waiting for their first token get a keep-alive ping this often (issue 14)
    stream_ping_seconds: float = 10.0
    # proxies whose X-Forwarded-For is believed when a key has an IP allowlist (docs/security.md)
    trusted_proxies: list[str] = field(default_factory=list)

    def check(self) -> None:
        import ipaddress

        for i, net in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"trusted_proxies[{i}]", f"{net!r} is not an IP address or CIDR network") from None
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise ConfigError("metrics_port", f"must be a TCP port number, not {self.metrics_port!r}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError("log_format", f"must be \"text\" or \"json\", not {self.log_format!r}")
        if self.max_body_bytes < 1:
            raise ConfigError("max_body_bytes", "must be positive")
        if self.max_concurrency < 1:
            raise ConfigError("max_concurrency", "must be positive")
        for key in ("max_headers", "max_header_bytes", "max_messages", "max_tools", "max_content_parts",
                    "max_string_chars"):
            if getattr(self, key) < 1:
                raise ConfigError(key, "must be positive")
        for key in ("header_timeout", "body_timeout", "stream_ping_seconds"):
            if not getattr(self, key) > 0:
                raise ConfigError(key, "must be a positive number of seconds")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError("log_level", f"must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")


def _check_proxy(url: str | None, key: str) -> None:
    if url:
        from .engines.proxy_url import parse_proxy_url

        try:
            parse_proxy_url(url)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None


def env_proxies(env: dict[str, str]) -> dict[str, str]:
    """The ``*_proxy`` variables as ``urllib.request.getproxies_environment`` reads them: scheme →
    URL (``no`` → the NO_PROXY list); the lower-case form wins over the upper-case one, and an
    empty lower-case variable unsets it. ``HTTP_PROXY`` in upper case is ignored under CGI
    (``REQUEST_METHOD`` set: "httpoxy"), as urllib does."""
    out: dict[str, str] = {}
    for name, value in env.items():
        if value and name.lower().endswith("_proxy") and name != name.lower():
            out[name[:-6].lower()] = value
    if "REQUEST_METHOD" in env:
        out.pop("http", None)
    for name, value in env.items():
        if name.endswith("_proxy") and name == name.lower():
            if value:
                out[name[:-6]] = value
            else:
                out.pop(name[:-6], None)
    return out


def proxy_from_env(proxies: dict[str, str], base_url: str) -> str:
    """The proxy the environment gives ``base_url`` ("" for direct): ``https_proxy`` for https
    upstreams, ``http_proxy`` for http ones, unless ``no_proxy`` matches the host (as
    ``urllib.request.proxy_bypass_environment``: ``*``, host names and domain suffixes, with or
    without a port). ConfigError naming the variable when its URL is not usable."""
    from urllib.parse import urlsplit
    from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed

    scheme = urlsplit(base_url).scheme
    url = proxies.get(scheme, "") if scheme in ("http", "https") else ""
    if not url:
        return ""
    host = urlsplit(base_url).netloc.rpartition("@")[2]
    if "no" in proxies and proxy_bypass_environment(host, proxies):
        return ""
    _check_proxy(url, f"{scheme.upper()}_PROXY")
    return url


@dataclass(slots=True)
class MemberConfig:
    """``[[upstreams.NAME.members]]``: one key and/or endpoint of a pool (see engines/pool.py)."""

    name: str
    base_url: str = ""  # empty: the upstream's base_url
    api_key: str | None = None
    api_key_env: str | None = None
    weight: float = 1.0
    max_concurrency: int | None = None
    rpm: int | None = None
    upstream_model: dict[str, str] = field(default_factory=dict)  # model id → the name this member knows
    # http://[user:pass@]host:port; "" = direct; unset: the upstream's proxy, else HTTPS_PROXY/HTTP_PROXY/NO_PROXY
    proxy: str | None = None

    def check(self) -> None:
        if not self.name:
            raise ConfigError("name", "must not be empty")
        _check_proxy(self.proxy, "proxy")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ConfigError("weight", f"must be a number > 0, not {self.weight!r}")
        for key in ("max_concurrency", "rpm"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(key, "must be positive")
        self.base_url = self.base_url.rstrip("/")


@dataclass(slots=True)
class UpstreamConfig:
    name: str  # the table's name, [upstreams.NAME]; not a key in the file
    protocol: str = "openai"
    base_url: str = ""
    api_key: str | None = None
    api_key_env: str | None = None  # the key is read from this environment variable when it is set
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
    # pools (engines/pool.py): members, health and the per-call deadline
    members: list[MemberConfig] = field(default_factory=list)
    deadline: float = 300.0  # a call's whole wait for an answer head, every member and retry included
    breaker_failures: int = 3  # consecutive failures that open a member's circuit breaker
    cooldown_max: float = 30.0  # the longest a failed member is kept out of rotation
    affinity_seconds: float = 1800.0  # a conversation keeps its member this long (prompt-cache affinity)
    # outbound proxy for every member (docs/engines.md "Outbound proxies"); "" = direct, unset = the environment
    proxy: str | None = None
    ca_file: str | None = None  # PEM file of the CAs trusted for https upstreams (default: the system's)

    def pool_members(self) -> list[MemberConfig]:
        """The pool: the members, base URL, key and proxy defaulting to the upstream's; without
        ``members``, one member named ``default`` from the upstream's own settings."""
        if not self.members:
            return [MemberConfig(name="default", base_url=self.base_url, api_key=self.api_key, proxy=self.proxy)]
        return [dataclasses.replace(m, base_url=m.base_url or self.base_url,
                                    proxy=self.proxy if m.proxy is None else m.proxy) for m in self.members]

    def resolve_proxies(self, env_proxies: dict[str, str]) -> None:
        """Give each member without an explicit ``proxy`` (its own or the upstream's) the one the
        environment names for its base URL (:func:`proxy_from_env`), "" meaning direct."""
        if self.protocol == "local" or self.proxy is not None:
            return
        if not self.members:
            self.proxy = proxy_from_env(env_proxies, self.base_url)
        for m in self.members:
            if m.proxy is None:
                m.proxy = proxy_from_env(env_proxies, m.base_url or self.base_url)

    def check(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError("protocol", f"must be one of {PROTOCOLS}, not {self.protocol!r}")
        for key in ("connect_timeout", "first_byte_timeout", "idle_timeout", "total_timeout", "deadline",
                    "cooldown_max"):
            if not getattr(self, key) > 0:
                raise ConfigError(key, "must be a positive number of seconds")
        if self.max_retries < 0:
            raise ConfigError("max_retries", "must be 0 or more")
        if self.max_connections < 1:
            raise ConfigError("max_connections", "must be positive")
        if self.breaker_failures < 1:
            raise ConfigError("breaker_failures", "must be positive")
        if self.affinity_seconds < 0:
            raise ConfigError("affinity_seconds", "must be 0 or more")
        _check_proxy(self.proxy, "proxy")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ConfigError("ca_file", f"{self.ca_file!r} is not a readable file")
        self.base_url = self.base_url.rstrip("/")
        if self.protocol == "local":
            if self.members:
                raise ConfigError("members", "a local upstream has no members")
            return
        from .engines._h1 import parse_base_url
        from .engines.transport import render_headers

        names = [m.name for m in self.members]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"members[{i}].name", f"{name!r} is used by another member")
        for i, m in enumerate(self.pool_members()):
            where = f"members[{i}]" if self.members else ""
            if not m.base_url:
                raise ConfigError(f"{where}.base_url" if where else "base_url",
                                  f"is required for protocol {self.protocol!r}")
            try:
                parse_base_url(m.base_url)
                render_headers({**self.headers, "authorization": m.api_key or self.api_key or ""})
            except ValueError as exc:
                raise ConfigError(where, str(exc)) from None

    def resolve_keys(self, env: dict[str, str]) -> None:
        """Read ``api_key_env`` variables (upstream and members); a pool whose members all lack
        a key fails start-up (a member without one gets the upstream's key, if any)."""
        if self.api_key_env:
            self.api_key = env.get(self.api_key_env, self.api_key)
        for m in self.members:
            if m.api_key_env:
                m.api_key = env.get(m.api_key_env, m.api_key)
            if m.api_key is None:
                m.api_key = self.api_key
        if self.members and not any(m.api_key for m in self.members):
            envs = [m.api_key_env for m in self.members if m.api_key_env]
            hint = f" (is {', '.join(envs)} set?)" if envs else ""
            raise ConfigError(f"upstreams.{self.name}.members", f"no member has an API key{hint}")
        if self.protocol != "local":
            try:
                self.check()  # a key from the environment must be a valid header value too
            except ConfigError as exc:
                raise exc.within(f"upstreams.{self.name}") from None


@dataclass(slots=True)
class RouterConfig:
    pro_engine: str = PRO_ENGINE
    flash_engine: str = FLASH_ENGINE  # step-3.5-flash; a later StepFun page names step-3.7-flash
    pro_share: float = 0.3
    threshold: float | None = None  # overrides pro_share when set
    max_tokens_cap: int = 250_000
    sticky_seconds: float = 1800.0

    def check(self) -> None:
        if not 0.0 <= self.pro_share <= 1.0:
            raise ConfigError("pro_share", f"must be between 0 and 1, not {self.pro_share!r}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ConfigError("threshold", "must be a finite number")
        if self.max_tokens_cap < 1:
            raise ConfigError("max_tokens_cap", "must be positive")
        if self.sticky_seconds < 0:
            raise ConfigError("sticky_seconds", "must be 0 or more")


@dataclass(slots=True)
class ResponsesConfig:
    """``[responses]``: the stored responses of the Responses API and the reasoning seal."""

    retention_days: float = 30.0  # stored responses (store: true) are kept this long
    previous_secrets: list[str] = field(default_factory=list)  # signing secrets used before a rotation

    def check(self) -> None:
        if not self.retention_days > 0:
            raise ConfigError("retention_days", "must be a number of days > 0")
        if not all(self.previous_secrets):
            raise ConfigError("previous_secrets", "must be a list of the (non-empty) secrets used before")


@dataclass(slots=True)
class ConsoleConfig:
    """``[console]``: the web console at ``/console`` (docs/console.md)."""

    enabled: bool = True
    self_service_keys: bool = False  # key holders may create and revoke their account's keys
    session_hours: float = 12.0  # a signed-in session ends this long after sign-in
    signin_attempts: int = 10  # failed sign-ins allowed per client IP within signin_window_seconds
    signin_window_seconds: int = 300
    trust_proxy: bool = False  # believe X-Forwarded-For / X-Forwarded-Proto (behind your own proxy only)
    base_url: str = ""  # the gateway's public URL for the set-up page; default: the URL the browser used

    def check(self) -> None:
        if not self.session_hours > 0:
            raise ConfigError("session_hours", "must be a number of hours > 0")
        if self.signin_attempts < 1:
            raise ConfigError("signin_attempts", "must be 1 or more")
        if self.signin_window_seconds < 1:
            raise ConfigError("signin_window_seconds", "must be 1 or more")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", f"must start with http:// or https://, not {self.base_url!r}")


@dataclass(slots=True)
class ConfigFile:
    """The config file's schema: one field per top-level ``[section]``."""

    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    upstreams: dict[str, UpstreamConfig] = field(default_factory=dict)
    # [models."ID"]: any ModelSpec field but ``id``; each is checked against ModelSpec's type.
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    router: RouterConfig = field(default_factory=RouterConfig)
    # [billing]: its schema is stepplan.billing.plans.BillingConfig, checked by load_settings.
    billing: dict[str, Any] = field(default_factory=dict)
    responses: ResponsesConfig = field(default_factory=ResponsesConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)


@dataclass(slots=True)
class Settings:
    database_url: str = "sqlite:///./stepplan.db"
    redis_url: str | None = None
    upstreams: dict[str, UpstreamConfig] = field(default_factory=dict)
    default_upstream: str = "local"
    catalog: Catalog = field(default_factory=Catalog.build)
    router: RouterConfig = field(default_factory=RouterConfig)
    billing: dict[str, Any] = field(default_factory=dict)
    admin_token: str | None = None
    secret: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_concurrency: int = 10_000
    max_headers: int = 100
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 15.0
    body_timeout: float = 120.0
    log_level: str = "info"
    config_path: str | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    responses: ResponsesConfig = field(default_factory=ResponsesConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    clock_offset: int = 0  # seconds added to the billing clock's wall time (STEPPLAN_CLOCK_OFFSET)
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

    def secrets(self) -> list[str | None]:
        """Every configured secret, for ``logs.add_secrets``: the admin token, the signing secret,
        each upstream's and each pool member's API key, and each proxy URL's userinfo."""
        from urllib.parse import unquote, urlsplit

        out: list[str | None] = [self.admin_token, self.secret]
        for up in self.upstreams.values():
            out.append(up.api_key)
            for m in up.pool_members():
                out.append(m.api_key)
                if m.proxy and "@" in m.proxy:
                    user = urlsplit(m.proxy if "://" in m.proxy else f"http://{m.proxy}")
                    out += [user.password and unquote(user.password), m.proxy.rpartition("@")[0]]
        return out


# --------------------------------------------------------------------------------------- the loader
_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_PLURALS = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}


def _describe(value: Any) -> str:
    kind = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)
    shown = repr(value) if not isinstance(value, (list, dict)) else ""
    return f"{kind} {shown}".strip()


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` (as TOML parsed it) checked against the type ``tp``; ConfigError names ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        errors: list[ConfigError] = []
        for option in options:
            try:
                return convert(value, option, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"must be a number, not {_describe(value)}")
    if tp in (str, int, bool):
        if type(value) is tp:
            return value
        raise ConfigError(key, f"must be {_KINDS[tp]}, not {_describe(value)}")
    if origin is dict:
        value_type = typing.get_args(tp)[1]
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table, not {_describe(value)}")
        out = {}
        named = dataclasses.is_dataclass(value_type) and "name" in {f.name for f in dataclasses.fields(value_type)}
        for k, v in value.items():
            if named:  # a table of named tables ([upstreams.NAME]): the name comes from the key
                out[k] = convert_section(v, value_type, f"{key}.{k}", fixed={"name": k})
                continue
            try:
                out[k] = convert(v, value_type, f"{key}.{k}")
            except ConfigError:
                if value_type in _PLURALS:  # a table of plain values: say so, naming the entry
                    raise ConfigError(key, f"must be a table of {_PLURALS[value_type]} "
                                           f"({k} is {_describe(v)})") from None
                raise
        return out
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(key, f"must be an array, not {_describe(value)}")
        args = typing.get_args(tp)
        item_type = args[0] if args else Any
        items = [convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return convert_section(value, tp, key)
    raise TypeError(f"config schema: unsupported type {tp!r} at {key}")  # a bug in a schema, not a config


def convert_section(raw: Any, cls: type, key: str, *, fixed: dict[str, Any] | None = None) -> Any:
    """A table → an instance of the dataclass ``cls``: unknown keys, wrong types and (through
    ``cls.check()``) bad values are a ConfigError naming the key. ``fixed`` fields (such as a
    table's name) are not keys of the file."""
    if not isinstance(raw, dict):
        raise ConfigError(key, f"must be a table, not {_describe(raw)}")
    fixed = fixed or {}
    hints = _hints(cls)
    fields_ = {f.name: f for f in dataclasses.fields(cls) if f.name not in fixed}
    unknown = [k for k in raw if k not in fields_]
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}" if key else unknown[0],
                          f"unknown key (known keys: {', '.join(fields_)})")
    missing = [n for n, f in fields_.items() if n not in raw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{key}.{missing[0]}" if key else missing[0], "is required")
    values = {k: convert(v, hints[k], f"{key}.{k}" if key else k) for k, v in raw.items()}
    obj = cls(**fixed, **values)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as exc:
            raise exc.within(key) from None
    return obj


def _models(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """[models."ID"] tables, each key checked against the type of that ModelSpec field."""
    hints = _hints(ModelSpec)
    out: dict[str, dict[str, Any]] = {}
    for name, table in raw.items():
        where = f"models.{name}"
        if not isinstance(table, dict):
            raise ConfigError(where, f"must be a table, not {_describe(table)}")
        unknown = [k for k in table if k not in _SPEC_FIELDS]
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", f"unknown key (known keys: {', '.join(sorted(_SPEC_FIELDS))})")
        values = dict(table)
        for k in ("price_input", "price_cache", "price_output"):  # prices may be written as numbers
            if isinstance(values.get(k), (int, float)) and not isinstance(values[k], bool):
                values[k] = str(values[k])
        out[name] = {k: convert(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return out


def _check_billing(raw: dict[str, Any]) -> None:
    from .billing.plans import BillingConfig

    try:
        BillingConfig.from_raw(raw)
    except (ValueError, TypeError, KeyError) as exc:
        message = str(exc)
        key, sep, rest = message.partition(": ")
        if sep and key.startswith("billing") and " " not in key:
            raise ConfigError(key, rest) from None
        raise ConfigError("billing", message) from None


def _clock_offset(env: dict[str, str]) -> int:
    from .billing.clock import Clock  # a leaf module: the one parser of STEPPLAN_CLOCK_OFFSET

    try:
        return Clock.from_env(env).offset
    except ValueError as exc:
        raise ConfigError("", str(exc)) from None


def read_config_file(path: str | os.PathLike[str]) -> ConfigFile:
    """The file, parsed and checked against :class:`ConfigFile`; ConfigError names the file."""
    where = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", where) from None
    try:
        cfg = convert_section(raw, ConfigFile, "")
        cfg.models = _models(cfg.models)
        if cfg.billing:
            _check_billing(cfg.billing)
    except ConfigError as exc:
        raise exc.within(path=where) from None
    return cfg


def load_settings(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    path = path or env.get("STEPPLAN_CONFIG")
    where = str(path) if path else None
    file = read_config_file(path) if path else ConfigFile()
    s = Settings(config_path=where)
    try:
        s.database_url = env.get("STEPPLAN_DATABASE_URL") or file.database.url or s.database_url
        s.redis_url = env.get("STEPPLAN_REDIS_URL") or file.redis.url or None
        proxies = env_proxies(env)
        for name, up in file.upstreams.items():
            up.resolve_proxies(proxies)  # a ConfigError names the variable (HTTPS_PROXY, ...)
            up.resolve_keys(env)
            s.upstreams[name] = up
        if not s.upstreams:
            s.upstreams["local"] = UpstreamConfig(name="local", protocol="local")
        server = s.server = file.server
        s.default_upstream = server.default_upstream or ("local" if "local" in s.upstreams else next(iter(s.upstreams)))
        if s.default_upstream not in s.upstreams:
            raise ConfigError("server.default_upstream", f"{s.default_upstream!r} is not a configured upstream")
        try:
            s.catalog = Catalog.build(file.models)
            s.catalog.check_fallbacks()
        except ValueError as exc:
            raise ConfigError("", str(exc)) from None
        for spec in s.catalog.models.values():
            if spec.upstream and spec.upstream not in s.upstreams:
                raise ConfigError(f"models.{spec.id}.upstream", f"{spec.upstream!r} is not a configured upstream")
        s.router = file.router
        for key in ("pro_engine", "flash_engine"):
            engine = getattr(s.router, key)
            if engine not in s.catalog.models:
                raise ConfigError(f"router.{key}", f"{engine!r} is not a model of the catalog")
        s.billing = file.billing
        s.responses = file.responses
        s.console = file.console
        s.admin_token = env.get("STEPPLAN_ADMIN_TOKEN") or server.admin_token
        s.secret = env.get("STEPPLAN_SECRET") or server.secret
        s.max_body_bytes = server.max_body_bytes
        s.max_concurrency = server.max_concurrency
        s.max_headers, s.max_header_bytes = server.max_headers, server.max_header_bytes
        s.header_timeout, s.body_timeout = server.header_timeout, server.body_timeout
        s.log_level = (env.get(LOG_LEVEL_ENV) or server.log_level).lower()
        if s.log_level not in LOG_LEVELS:
            raise ConfigError(LOG_LEVEL_ENV, f"must be one of {', '.join(LOG_LEVELS)}, not {s.log_level!r}")
        s.clock_offset = _clock_offset(env)
        _observability(s, server, env)
    except ConfigError as exc:
        raise exc.within(path=where) from None
    return s


def _observability(s: Settings, server: ServerConfig, env: dict[str, str]) -> None:
    """``[server]`` keys for metrics and logs; ``STEPPLAN_METRICS=0`` turns metrics off (benchmarks) and
    ``STEPPLAN_LOG_FORMAT`` overrides the log format."""
    metrics = env.get("STEPPLAN_METRICS")
    s.metrics = server.metrics if metrics is None else metrics.lower() not in ("0", "false", "off", "no")
    s.metrics_port, s.metrics_host = server.metrics_port, server.metrics_host
    s.metrics_account_labels = server.metrics_account_labels
    s.log_format = env.get("STEPPLAN_LOG_FORMAT") or server.log_format
    if s.log_format not in LOG_FORMATS:
        raise ConfigError("STEPPLAN_LOG_FORMAT", f"must be \"text\" or \"json\", not {s.log_format!r}")

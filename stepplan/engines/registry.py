"""The engine registry: one engine per configured upstream, built on first use from settings.

This is the only module that knows the concrete engines; they are imported when an upstream
of their protocol is first used, so a gateway without a local model never imports llama.cpp.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..settings import Settings, UpstreamConfig
from .base import Engine
from .proxy_url import proxy_where

EngineFactory = Callable[[UpstreamConfig], Engine]


class EngineRegistry:
    """One engine per configured upstream, built once at start-up."""

    def __init__(self, settings: Settings, factories: dict[str, EngineFactory] | None = None):
        self.settings = settings
        self.factories = factories or default_factories()
        self.engines: dict[str, Engine] = {}

    def for_model(self, model_id: str) -> Engine:
        up = self.settings.upstream_for(model_id)
        engine = self.engines.get(up.name)
        if engine is None:
            engine = self.engines[up.name] = self.factories[up.protocol](up)
        return engine

    def preload(self) -> None:
        """Let engines that run a model in process (``local``) start loading it in the
        background, for every upstream some model is served by. Never blocks or raises."""
        used = {self.settings.default_upstream}
        used |= {m.upstream for m in self.settings.catalog.models.values() if m.upstream}
        for name in sorted(used):
            up = self.settings.upstreams[name]
            if up.protocol != "local":
                continue
            engine = self.engines.get(name)
            if engine is None:
                engine = self.engines[name] = self.factories[up.protocol](up)
            start = getattr(engine, "preload", None)
            if start is not None:
                start()

    def upstream_states(self) -> list[dict[str, Any]]:
        """Each configured upstream's pool and its members' health (per process, read-only).
        An upstream no call has used yet has no state: its members are listed as configured."""
        out: list[dict[str, Any]] = []
        for name, up in self.settings.upstreams.items():
            http = getattr(self.engines.get(name), "http", None)
            pool = getattr(http, "pool", None)
            if pool is not None:
                view = pool.view()
            else:
                members = [] if up.protocol == "local" else [
                    {"name": m.name, "base_url": m.base_url, "weight": m.weight, "state": "closed", "available": True,
                     "in_flight": 0, "consecutive_failures": 0, "failures": 0, "cooldown_until": None,
                     "max_concurrency": m.max_concurrency, "rpm": m.rpm, "credentials_rejected": False,
                     "proxy": proxy_where(m.proxy)} for m in up.pool_members()]
                view = {"name": name, "members": members}
            out.append({**view, "protocol": up.protocol, "used": name in self.engines})
        return out

    async def aclose(self) -> None:
        for engine in self.engines.values():
            await engine.aclose()
        self.engines.clear()


def default_factories() -> dict[str, EngineFactory]:
    def openai(up: UpstreamConfig) -> Engine:
        from .openai import OpenAIEngine

        return OpenAIEngine(up)

    def anthropic(up: UpstreamConfig) -> Engine:
        from .anthropic import AnthropicEngine

        return AnthropicEngine(up)

    def local(up: UpstreamConfig) -> Engine:
        from .local import LocalEngine

        return LocalEngine(up)

    return {"openai": openai, "anthropic": anthropic, "local": local}

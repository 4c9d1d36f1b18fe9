"""Which engine serves a call: the identity for ordinary models, the learned policy
for ``step-router-v1`` (with the DeepSeek engine field rules, stickiness and a
fallback engine)."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from ..catalog import Catalog, ModelSpec
from ..errors import InvalidRequest, UnsupportedContent
from ..protocols.canonical import Audio, Document, Image, Request, Text, ToolResult, Video
from ..settings import RouterConfig
from .inputs import route_input
from .types import RouteChoice

if TYPE_CHECKING:
    from .policy import RouterPolicy

__all__ = ["RouteChoice", "Router", "Stickiness", "route_input"]


def _conversation_key(req: Request) -> str:
    """Stable across a conversation's turns: the session id, else a hash of its opening."""
    if req.session_id:
        return "s:" + req.session_id
    h = hashlib.blake2b(digest_size=16)
    for t in req.system:
        h.update(t.text.encode())
    for m in req.messages[:1]:
        for b in m.content:
            if isinstance(b, Text):
                h.update(b.text.encode())
    return "h:" + h.hexdigest()


class Stickiness:
    """Conversations that went to Pro stay there for a while (cache affinity, replay)."""

    def __init__(self, seconds: float, max_entries: int = 100_000):
        self.seconds = seconds
        self.max_entries = max_entries
        self._until: OrderedDict[str, float] = OrderedDict()

    def is_sticky(self, key: str) -> bool:
        until = self._until.get(key)
        return until is not None and until > time.monotonic()

    def stick(self, key: str) -> None:
        self._until[key] = time.monotonic() + self.seconds
        self._until.move_to_end(key)
        while len(self._until) > self.max_entries:
            self._until.popitem(last=False)


class Router:
    def __init__(self, catalog: Catalog, cfg: RouterConfig):
        self.catalog = catalog
        self.cfg = cfg
        self._policy: RouterPolicy | None = None
        self.sticky = Stickiness(cfg.sticky_seconds)

    def preload(self) -> None:
        """Load the policy now (weights and compiled trees, ~20 ms) when a public model
        routes, so the first routed call does not pay for it and bad weights fail start-up."""
        if any(m.kind == "router" for m in self.catalog.public()):
            self.policy  # noqa: B018 - the property loads the policy

    @property
    def loaded(self) -> bool:
        """Whether the routing policy (weights and trees) is loaded (readiness)."""
        return self._policy is not None

    @property
    def policy(self) -> RouterPolicy:
        """Loaded on first use (or by :meth:`preload`), so gateways that never route pay nothing."""
        if self._policy is None:
            from .policy import RouterPolicy, threshold_for_pro_share
            from .scorer import RouterScorer

            cfg = self.cfg
            scorer = RouterScorer()
            threshold = cfg.threshold if cfg.threshold is not None else \
                threshold_for_pro_share(cfg.pro_share, scorer.score_quantiles or None)
            self._policy = RouterPolicy(scorer, threshold, pro_engine=cfg.pro_engine, flash_engine=cfg.flash_engine)
        return self._policy

    def check_fields(self, req: Request) -> None:
        """The DeepSeek engine field rules (spec §3), checked before any routing."""
        if req.max_tokens is not None and req.max_tokens > self.cfg.max_tokens_cap:
            raise InvalidRequest(
                f"max_tokens must be <= {self.cfg.max_tokens_cap} for step-router-v1", param="max_tokens"
            )
        for m in req.messages:
            for b in m.content:
                for x in b.content if isinstance(b, ToolResult) else (b,):
                    if isinstance(x, (Image, Video, Audio, Document)):
                        kind = type(x).__name__.lower()
                        raise UnsupportedContent(f"step-router-v1 does not accept {kind} input")
        for t in req.tools:
            if t.kind.startswith("web_search"):
                raise UnsupportedContent("step-router-v1 does not support the web_search tool")

    def choose(self, req: Request, spec: ModelSpec) -> RouteChoice:
        if spec.kind != "router":
            return RouteChoice([spec])
        pro = self.catalog.get(self.cfg.pro_engine)
        flash = self.catalog.get(self.cfg.flash_engine)
        key = _conversation_key(req)
        decision = self.policy.decide(route_input(req))
        if self.sticky.is_sticky(key):
            engine, reason = pro, f"sticky;{decision.reason}"
        else:
            engine = pro if decision.engine == pro.id else flash
            reason = decision.reason
        if engine is pro:
            self.sticky.stick(key)
            return RouteChoice([pro, flash], decision.score, reason)
        return RouteChoice([flash, pro], decision.score, reason)

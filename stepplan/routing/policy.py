"""Routing policy for ``step-router-v1``: request shape, decision and thresholds.

The policy turns a score P(pro) from :class:`~stepplan.routing.scorer.RouterScorer`
into an engine choice.  The threshold can be set directly or derived from a
target Pro share with :meth:`RouterPolicy.for_pro_share` /
:func:`threshold_for_pro_share`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

PRO_ENGINE = "deepseek-v4-pro"
# The Step Plan page this product implements routes between deepseek-v4-pro and step-3.5-flash
# (and bills a flash hit as step-3.5-flash); a later StepFun page names step-3.7-flash, which is
# one line of config away: [router] flash_engine = "step-3.7-flash".
FLASH_ENGINE = "step-3.5-flash"
DEFAULT_PRO_SHARE = 0.3

_ROLES = frozenset({"system", "user", "assistant", "tool"})


@dataclass
class RouteInput:
    """What the router sees of a request (protocol-independent).

    ``turns`` holds ``(role, text)`` pairs in conversation order; roles are
    ``system``, ``user``, ``assistant`` or ``tool`` (``developer`` is folded
    into ``system``).  Only text is kept: images/audio are not scored.
    """

    turns: list[tuple[str, str]] = field(default_factory=list)
    n_tools: int = 0
    effort: str | None = None
    thinking: bool | None = None
    input_tokens: int | None = None


@dataclass(frozen=True)
class RouteDecision:
    engine: str
    score: float
    reason: str


class Scorer(Protocol):
    def score(self, inp: RouteInput) -> float: ...


def _content_text(content: Any) -> str:
    """Text of an OpenAI/Anthropic ``content`` value (str, None or list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        content = [content]
    if isinstance(content, Iterable):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping):
                ptype = part.get("type")
                if ptype in (None, "text", "input_text", "output_text"):
                    text = part.get("text")
                    if isinstance(text, str):
                        texts.append(text)
                elif ptype == "tool_result":
                    texts.append(_content_text(part.get("content")))
        return "\n".join(t for t in texts if t)
    return ""


def _normalise_role(role: Any) -> str:
    role = str(role or "user").lower()
    if role == "developer":
        return "system"
    if role == "function":
        return "tool"
    return role if role in _ROLES else "user"


def route_input_from_openai_messages(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Any] | None = None,
    *,
    effort: str | None = None,
    thinking: bool | None = None,
    input_tokens: int | None = None,
) -> RouteInput:
    """Build a :class:`RouteInput` from OpenAI Chat Completions ``messages``.

    ``content`` may be a string, ``None`` or a list of parts; only text parts
    are kept.  Assistant ``tool_calls`` arguments are not scored, but a turn
    that only made tool calls is still recorded (with empty text) so the turn
    count is right.
    """
    turns: list[tuple[str, str]] = []
    for msg in messages:
        if not isinstance(msg, Mapping):
            continue
        turns.append((_normalise_role(msg.get("role")), _content_text(msg.get("content"))))
    return RouteInput(
        turns=turns,
        n_tools=len(tools) if tools else 0,
        effort=effort,
        thinking=thinking,
        input_tokens=input_tokens,
    )


def threshold_for_pro_share(share: float, quantiles: Sequence[float] | None = None) -> float:
    """Score threshold that sends about ``share`` of traffic to Pro.

    ``quantiles`` are ``q[i]`` = the ``i/(n-1)`` quantile of the reference
    score distribution (ascending, as stored in ``weights.json``); by default
    those of the shipped weights.  A request goes to Pro when
    ``score >= threshold``; the threshold is the ``1 - share`` quantile,
    linearly interpolated.  ``share <= 0`` returns a threshold above every
    score (never Pro), ``share >= 1`` returns 0.0 (always Pro).
    """
    if quantiles is None:
        from stepplan.routing.scorer import default_scorer

        quantiles = default_scorer().score_quantiles
    if not quantiles:
        raise ValueError("empty score quantiles")
    if math.isnan(share):
        raise ValueError("share is NaN")
    if share <= 0.0:
        return 1.0 + 1e-9
    if share >= 1.0:
        return 0.0
    n = len(quantiles)
    if n == 1:
        return float(quantiles[0])
    pos = (1.0 - share) * (n - 1)
    lo = int(pos)
    if lo >= n - 1:
        return float(quantiles[-1])
    frac = pos - lo
    return float(quantiles[lo] + (quantiles[lo + 1] - quantiles[lo]) * frac)


class RouterPolicy:
    """Send a request to Pro when its score is at or above ``threshold``.

    Scores lie in [0, 1]: a threshold above 1 never picks Pro, 0 always does.
    ``reason`` is machine-readable: ``score=0.6120>=0.6003`` or
    ``score=0.5710<0.6003``.
    """

    def __init__(
        self,
        scorer: Scorer,
        threshold: float,
        pro_engine: str = PRO_ENGINE,
        flash_engine: str = FLASH_ENGINE,
    ) -> None:
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        self.scorer = scorer
        self.threshold = float(threshold)
        self.pro_engine = pro_engine
        self.flash_engine = flash_engine

    @classmethod
    def for_pro_share(
        cls,
        scorer: Any,
        share: float = DEFAULT_PRO_SHARE,
        pro_engine: str = PRO_ENGINE,
        flash_engine: str = FLASH_ENGINE,
    ) -> RouterPolicy:
        """Policy whose threshold targets ``share`` Pro calls on the scorer's
        reference score distribution."""
        quantiles = getattr(scorer, "score_quantiles", None) or None
        return cls(scorer, threshold_for_pro_share(share, quantiles), pro_engine, flash_engine)

    def threshold_for_pro_share(self, share: float) -> float:
        """Threshold for a target Pro share, from the scorer's reference
        score distribution (or the shipped one if the scorer has none)."""
        quantiles = getattr(self.scorer, "score_quantiles", None) or None
        return threshold_for_pro_share(share, quantiles)

    def set_pro_share(self, share: float) -> None:
        self.threshold = self.threshold_for_pro_share(share)

    def decide(self, inp: RouteInput) -> RouteDecision:
        score = self.scorer.score(inp)
        if score >= self.threshold:
            return RouteDecision(self.pro_engine, score, f"score={score:.4f}>={self.threshold:.4f}")
        return RouteDecision(self.flash_engine, score, f"score={score:.4f}<{self.threshold:.4f}")

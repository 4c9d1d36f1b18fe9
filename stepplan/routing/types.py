"""The router's types: what it sees of a request, what it decides, and what a scorer is.

Every other routing module imports these from here (features, scorer, policy, route), so none
of them needs another for a type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..catalog import ModelSpec


@dataclass
class RouteInput:
    """What the router sees of a request (protocol-independent).

    ``turns`` holds ``(role, text)`` pairs in conversation order; roles are
    ``system``, ``user``, ``assistant`` or ``tool`` (``developer`` is folded
    into ``system``).  Only text is kept: images/audio are not scored.
    Built by :func:`stepplan.routing.inputs.route_input`, for serving and training alike.
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


@dataclass(slots=True)
class RouteChoice:
    engines: list[ModelSpec]  # first = chosen engine; the rest = fallbacks in order
    score: float | None = None
    reason: str | None = None


class Scorer(Protocol):
    def score(self, inp: RouteInput) -> float: ...

"""Reasoning effort: the one vocabulary every client protocol speaks and the one rule that
maps it onto what a model supports.

Clients send whatever their own ladder has (OpenAI ``reasoning_effort``, Anthropic
``output_config.effort``, the Responses API's ``reasoning.effort``); codecs only check that
the value is an effort word (:func:`parse`) and keep it as sent. The pipeline then resolves
it per model with :func:`resolve`, which is the same for every protocol:

- the ordered ladder is ``minimal < low < medium < high < xhigh < max``; a word maps to the
  nearest level the model supports, and a tie goes to the model's default level;
- ``none`` (and ``thinking: disabled``) asks for no reasoning: a model with its own thinking
  switch (DeepSeek) gets thinking disabled and no effort; any other model cannot stop
  reasoning and gets its lowest level;
- Anthropic ``thinking: {type: enabled, budget_tokens: N}`` without an explicit effort
  becomes ``low`` (N ≤ 4096), ``medium`` (N ≤ 16384) or ``high``, then the nearest-level
  rule; ``adaptive`` (or ``enabled`` without a budget) means the model's default level;
- a model without effort levels gets no effort at all.

Each model's word → level table is built once (:func:`table`), so resolving a request is a
dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequest

if TYPE_CHECKING:
    from ..catalog import ModelSpec

#: The ordered effort ladder, lowest first.
LADDER: tuple[str, ...] = ("minimal", "low", "medium", "high", "xhigh", "max")
#: ``none``: the client wants no reasoning (OpenAI's word for it).
NONE = "none"
#: Every value a client may send.
WORDS: tuple[str, ...] = (NONE, *LADDER)
_RANK = {w: i for i, w in enumerate(LADDER)}
_WORDS = frozenset(WORDS)

#: ``thinking.budget_tokens`` → effort word: the first row whose bound the budget does not exceed.
BUDGET_TABLE: tuple[tuple[int, str], ...] = ((4096, "low"), (16384, "medium"))
BUDGET_ABOVE = "high"


def parse(value: Any, field: str) -> str | None:
    """A client's effort value as an effort word (lower-cased), or the error naming ``field``."""
    if value is None:
        return None
    if isinstance(value, str):
        word = value if value in _WORDS else value.strip().lower()
        if word in _WORDS:
            return word
    raise InvalidRequest(f"'{field}' must be one of {', '.join(WORDS)}; got {value!r}", param=field)


def nearest(word: str, levels: tuple[str, ...], default: str) -> str:
    """The level of ``levels`` nearest to ``word`` on the ladder; a tie goes to ``default``."""
    rank = _RANK[word]
    best = min(abs(_RANK[lv] - rank) for lv in levels)
    ties = [lv for lv in levels if abs(_RANK[lv] - rank) == best]
    return ties[0] if len(ties) == 1 else default


def check_levels(levels: tuple[str, ...], default: str | None, where: str) -> tuple[tuple[str, ...], str | None]:
    """Validate a model's levels and default; return them in ladder order (default filled in)."""
    unknown = [lv for lv in levels if lv not in _RANK]
    if unknown:
        raise ValueError(f"{where}: efforts {unknown} are not effort levels; use {', '.join(LADDER)}")
    ordered = tuple(sorted(set(levels), key=_RANK.__getitem__))
    if not ordered:
        if default is not None:
            raise ValueError(f"{where}: default_effort is set but the model has no efforts")
        return ordered, None
    if default is None:
        default = ordered[(len(ordered) - 1) // 2]  # the middle level (the lower of two middles)
    elif default not in ordered:
        raise ValueError(f"{where}: default_effort {default!r} is not one of its efforts {list(ordered)}")
    return ordered, default


def table(levels: tuple[str, ...], default: str | None) -> dict[str, str | None]:
    """Every ladder word → the level a model with these levels uses (None: no levels)."""
    if not levels or default is None:
        return dict.fromkeys(LADDER)
    return {w: nearest(w, levels, default) for w in LADDER}


def budget_word(budget: int) -> str:
    """An Anthropic thinking budget as an effort word (``BUDGET_TABLE``)."""
    for bound, word in BUDGET_TABLE:
        if budget <= bound:
            return word
    return BUDGET_ABOVE


def resolve(spec: ModelSpec, effort: str | None, thinking: bool | None,
            budget: int | None) -> tuple[str | None, bool | None]:
    """The effort and thinking switch a model receives for what the client asked.

    ``effort`` is a word from :data:`WORDS` as sent (or None), ``thinking`` the client's
    switch (None: unset), ``budget`` its thinking budget. Returns ``(effort, thinking)``:
    the level to forward (None: forward none) and the switch to forward (None: none)."""
    levels: Mapping[str, str | None] = spec.effort_table
    if effort is not None and effort not in levels and effort != NONE:
        effort = parse(effort, "reasoning_effort")  # unchecked input: normalised, or the error
    if thinking is False or effort == NONE:
        if spec.thinking_switch:
            return None, False  # the model's own switch turns reasoning off; no contradicting effort
        return (spec.efforts[0] if spec.efforts else None), None  # cannot stop reasoning: its lowest level
    if effort is not None:
        return levels[effort], thinking
    if thinking:
        if budget is not None:
            return levels[budget_word(budget)], thinking
        return spec.default_effort, thinking
    return None, thinking


__all__ = ["BUDGET_ABOVE", "BUDGET_TABLE", "LADDER", "NONE", "WORDS", "budget_word", "check_levels", "nearest",
           "parse", "resolve", "table"]

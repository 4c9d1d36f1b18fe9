"""The model catalog: what each public model can do and what it costs.

Prices are CNY per 1M tokens, kept as exact strings in config and converted to integer
micro-credit rates by :mod:`stepplan.billing.pricing`. The defaults follow the
open-platform list prices (spec §6.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .errors import InvalidRequest, ModelNotFound
from .protocols import effort as _effort

EFFORTS = ("low", "medium", "high")
# How an upstream is told to think or not: "" (it is not told), "deepseek" (DeepSeek's
# ``thinking: {"type": "enabled" | "disabled"}`` request field on the OpenAI protocol).
THINKING_STYLES = ("", "deepseek")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    context_length: int
    max_output: int
    input_modalities: tuple[str, ...]
    efforts: tuple[str, ...]  # effort levels, in ladder order; empty: no effort is forwarded
    price_input: str  # CNY per 1M uncached input tokens
    price_cache: str  # CNY per 1M cache-hit input tokens
    price_output: str  # CNY per 1M output tokens
    public: bool = True  # False: engine-only, cannot be requested directly
    kind: str = "llm"  # "llm" | "router"
    reasoning: bool = True
    created: int = 1_767_225_600  # 2026-01-01
    owned_by: str = "stepfun"
    upstream: str | None = None  # upstream name; None = default upstream
    upstream_model: str | None = None  # name sent upstream; None = same as id
    price_windows: tuple[dict[str, Any], ...] = ()  # optional time-of-day price windows
    default_effort: str | None = None  # the level used without one, and for ties; None: the middle level
    thinking_style: str = ""  # one of THINKING_STYLES: how the upstream is told to think or not
    fallbacks: tuple[str, ...] = ()  # models tried in order when this one fails before the first byte
    # Every effort word → the level this model uses (stepplan.protocols.effort); built once.
    effort_table: dict[str, str | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        levels, default = _effort.check_levels(self.efforts, self.default_effort, f"models.{self.id}")
        object.__setattr__(self, "efforts", levels)
        object.__setattr__(self, "default_effort", default)
        object.__setattr__(self, "effort_table", _effort.table(levels, default))

    @property
    def thinking_switch(self) -> bool:
        """Reasoning can be turned off (``thinking: disabled``), as on DeepSeek."""
        return self.thinking_style == "deepseek"

    @property
    def vision(self) -> bool:
        return "image" in self.input_modalities

    def sent_name(self) -> str:
        return self.upstream_model or self.id

    def check_effort(self, effort: str | None) -> str | None:
        """The level this model uses for an effort word (None: none is forwarded); the error
        for a value that is not an effort word. ``none`` is the model's lowest level here;
        :func:`stepplan.protocols.effort.resolve` also weighs the thinking switch."""
        return _effort.resolve(self, effort, None, None)[0]


DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    # Effort levels and defaults (spec §6.2): step-3.7-flash low/medium/high, medium the
    # recommended default. step-3.5-flash-2603 takes only low/high; no default is documented, and
    # it is the dated step-3.5-flash, whose only mode is full reasoning, so high. DeepSeek's own
    # levels are high/max (it maps low/medium to high itself), high by default, and it has a
    # thinking switch. step-3.5-flash has no effort levels; the router maps effort per engine.
    ModelSpec("step-3.7-flash", 262_144, 250_000, ("text", "image", "video", "audio"), EFFORTS,
              "1.35", "0.27", "8.1", default_effort="medium"),
    ModelSpec("step-3.5-flash-2603", 262_144, 65_536, ("text",), ("low", "high"), "0.7", "0.14", "2.1",
              default_effort="high"),
    ModelSpec("step-3.5-flash", 262_144, 65_536, ("text",), (), "0.7", "0.14", "2.1"),
    ModelSpec("step-router-v1", 1_048_576, 250_000, ("text",), (), "0", "0", "0", kind="router"),
    # DeepSeek's published CNY list price (peak); off-peak windows can be configured.
    ModelSpec("deepseek-v4-pro", 1_048_576, 250_000, ("text",), ("high", "max"), "9.0", "0.30", "27.0",
              public=False, owned_by="deepseek", default_effort="high", thinking_style="deepseek"),
)

_SPEC_FIELDS = {
    "context_length", "max_output", "input_modalities", "efforts", "price_input", "price_cache",
    "price_output", "public", "kind", "reasoning", "owned_by", "upstream", "upstream_model", "price_windows",
    "default_effort", "thinking_style", "fallbacks",
}


def _walk_fallbacks(models: dict[str, ModelSpec], m: ModelSpec, seen: set[str], out: list[ModelSpec]) -> None:
    for name in m.fallbacks:
        if name not in seen:
            seen.add(name)
            out.append(models[name])
            _walk_fallbacks(models, models[name], seen, out)


@dataclass(slots=True)
class Catalog:
    models: dict[str, ModelSpec] = field(default_factory=dict)
    _chains: dict[str, tuple[ModelSpec, ...]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(cls, overrides: dict[str, dict[str, Any]] | None = None) -> Catalog:
        models = {m.id: m for m in DEFAULT_MODELS}
        for name, raw in (overrides or {}).items():
            unknown = set(raw) - _SPEC_FIELDS
            if unknown:
                raise ValueError(f"models.{name}: unknown keys {sorted(unknown)}")
            values = dict(raw)
            for key in ("input_modalities", "efforts", "price_windows", "fallbacks"):
                if key in values:
                    values[key] = tuple(values[key])
            for key in ("price_input", "price_cache", "price_output"):
                if key in values:
                    values[key] = str(values[key])
            if values.get("thinking_style", "") not in THINKING_STYLES:
                raise ValueError(f"models.{name}.thinking_style must be one of {THINKING_STYLES}, "
                                 f"not {values['thinking_style']!r}")
            # A model added by config that names itself deepseek-* and does not say otherwise
            # thinks the DeepSeek way (what configs written before the setting existed relied on).
            style = "deepseek" if name.startswith("deepseek") else ""
            base = models.get(name) or ModelSpec(name, 131_072, 32_768, ("text",), (), "0", "0", "0",
                                                 thinking_style=style)
            if "efforts" in values and "default_effort" not in values:
                values["default_effort"] = None  # new levels: the old default may not be one of them
            models[name] = replace(base, **values)
        return cls(models)

    def fallback_chain(self, spec: ModelSpec) -> tuple[ModelSpec, ...]:
        """``spec``'s fallbacks in order, each followed by its own (depth first, each model once).
        Computed once per model: the chain is configuration, asked for on every call."""
        if not spec.fallbacks:
            return ()
        chain = self._chains.get(spec.id)
        if chain is None:
            out: list[ModelSpec] = []
            _walk_fallbacks(self.models, spec, {spec.id}, out)
            chain = self._chains[spec.id] = tuple(out)
        return chain

    def check_fallbacks(self) -> None:
        """ValueError naming the model for a fallback to an unknown model, to a router, or a cycle."""
        for m in self.models.values():
            for name in m.fallbacks:
                target = self.models.get(name)
                if target is None:
                    raise ValueError(f"models.{m.id}.fallbacks: {name!r} is not a model of the catalog")
                if target.kind == "router" or name == m.id:
                    raise ValueError(f"models.{m.id}.fallbacks: {name!r} cannot be a fallback")
        state: dict[str, int] = {}  # 1: on the path, 2: done

        def visit(mid: str, path: list[str]) -> None:
            state[mid] = 1
            for name in self.models[mid].fallbacks:
                if state.get(name) == 1:
                    cycle = " → ".join([*path[path.index(name):], name])
                    raise ValueError(f"models.{mid}.fallbacks: a fallback cycle ({cycle})")
                if name not in state:
                    visit(name, [*path, name])
            state[mid] = 2

        for mid in self.models:
            if mid not in state:
                visit(mid, [mid])

    def public(self) -> list[ModelSpec]:
        return [m for m in self.models.values() if m.public]

    def resolve(self, name: Any) -> ModelSpec:
        """The spec for a model a client asked for, or the protocol-correct error."""
        if not isinstance(name, str) or not name:
            raise InvalidRequest("'model' is required and must be a string", param="model")
        spec = self.models.get(name)
        if spec is None:
            raise ModelNotFound(f"model does not exist: '{name}'", param="model")
        if not spec.public:
            raise InvalidRequest(
                f"model '{name}' is an engine of step-router-v1 and cannot be requested directly; "
                "use model 'step-router-v1'",
                param="model",
            )
        return spec

    def get(self, name: str) -> ModelSpec:
        return self.models[name]


def model_card(spec: ModelSpec) -> dict[str, Any]:
    """The /models entry: OpenAI's shape plus the fields Step Code reads."""
    return {
        "id": spec.id,
        "object": "model",
        "created": spec.created,
        "owned_by": spec.owned_by,
        "model_type": "路由模型" if spec.kind == "router" else "大语言模型",
        "max_input_tokens": spec.context_length,
        "max_output_tokens": spec.max_output,
        "context_length": spec.context_length,
        "enable_reason": spec.reasoning,
        "enable_vision_input": spec.vision,
        "input_modalities": list(spec.input_modalities),
        "reasoning_effort_support_list": list(spec.efforts),
        "pricing": {"currency": "CNY", "unit": "1M tokens", "input": spec.price_input,
                    "cache_hit_input": spec.price_cache, "output": spec.price_output},
    }

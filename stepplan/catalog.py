"""The model catalog: what each public model can do and what it costs.

Prices are CNY per 1M tokens, kept as exact strings in config and converted to integer
micro-credit rates by :mod:`stepplan.billing.pricing`. The defaults follow the
open-platform list prices (spec §6.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .errors import InvalidRequest, ModelNotFound

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
    efforts: tuple[str, ...]  # empty: effort is ignored
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
    thinking_style: str = ""  # one of THINKING_STYLES: how the upstream is told to think or not

    @property
    def vision(self) -> bool:
        return "image" in self.input_modalities

    def sent_name(self) -> str:
        return self.upstream_model or self.id

    def check_effort(self, effort: str | None) -> str | None:
        """Validate a requested effort; return the effort to forward (or None)."""
        if effort is None:
            return None
        if effort not in EFFORTS:
            raise InvalidRequest(
                f"reasoning effort '{effort}' is invalid; use one of: {', '.join(EFFORTS)}",
                param="reasoning_effort",
            )
        if not self.efforts:
            return None  # agents always send one; models without effort ignore it
        if effort not in self.efforts:
            raise InvalidRequest(
                f"model {self.id} does not support reasoning effort '{effort}'; "
                f"allowed values: {', '.join(self.efforts)}",
                param="reasoning_effort",
            )
        return effort


DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("step-3.7-flash", 262_144, 250_000, ("text", "image", "video", "audio"), EFFORTS,
              "1.35", "0.27", "8.1"),
    ModelSpec("step-3.5-flash-2603", 262_144, 65_536, ("text",), ("low", "high"), "0.7", "0.14", "2.1"),
    ModelSpec("step-3.5-flash", 262_144, 65_536, ("text",), (), "0.7", "0.14", "2.1"),
    ModelSpec("step-router-v1", 1_048_576, 250_000, ("text",), (), "0", "0", "0", kind="router"),
    # DeepSeek's published CNY list price (peak); off-peak windows can be configured.
    ModelSpec("deepseek-v4-pro", 1_048_576, 250_000, ("text",), ("low", "medium", "high"), "9.0", "0.30", "27.0",
              public=False, owned_by="deepseek", thinking_style="deepseek"),
)

_SPEC_FIELDS = {
    "context_length", "max_output", "input_modalities", "efforts", "price_input", "price_cache",
    "price_output", "public", "kind", "reasoning", "owned_by", "upstream", "upstream_model", "price_windows",
    "thinking_style",
}


@dataclass(slots=True)
class Catalog:
    models: dict[str, ModelSpec] = field(default_factory=dict)

    @classmethod
    def build(cls, overrides: dict[str, dict[str, Any]] | None = None) -> Catalog:
        models = {m.id: m for m in DEFAULT_MODELS}
        for name, raw in (overrides or {}).items():
            unknown = set(raw) - _SPEC_FIELDS
            if unknown:
                raise ValueError(f"models.{name}: unknown keys {sorted(unknown)}")
            values = dict(raw)
            for key in ("input_modalities", "efforts", "price_windows"):
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
            models[name] = replace(base, **values)
        return cls(models)

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

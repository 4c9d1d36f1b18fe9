"""Plans, top-up packs and metering knobs, from the ``[billing]`` config section.

Defaults follow spec §5.1. Any key can be overridden and new plans or packs added::

    [billing]
    enabled = true                 # false: no metering at all (NullMeter)
    reserve_output_tokens = 32768  # output reserved for a call that sets no max_tokens
    reserve_cap_credits = 16000000 # no single reservation is larger (Credits)

    [billing.plans.flash-plus]
    monthly_credits = 1600000000   # Credits issued at the start of every monthly cycle
    prices = { monthly = "99", quarterly = "269", yearly = "936" }   # CNY
    concurrency = 1000             # calls in flight per account (0 = unlimited)
    rpm = 30000                    # calls started per minute per account (0 = unlimited)
    window_5h_credits = 0          # optional 5-hour window limit (0 = off)
    window_week_credits = 0        # optional weekly window limit (0 = off)

    [billing.packs.small]
    credits = 400000000
    price = "49"
    days = 30

Money (plan and pack prices) is kept in fen (¥0.01) as integers; credit amounts in
micro-credits (see :mod:`stepplan.billing.pricing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from .pricing import MICRO

PERIODS: dict[str, int] = {"monthly": 1, "quarterly": 3, "yearly": 12}  # months per term

DEFAULT_PLANS: dict[str, dict[str, Any]] = {
    "flash-mini": {"name": "Flash Mini", "monthly_credits": 400_000_000,
                   "prices": {"monthly": "49", "quarterly": "129", "yearly": "456"},
                   "concurrency": 100, "rpm": 3_000},
    "flash-plus": {"name": "Flash Plus", "monthly_credits": 1_600_000_000,
                   "prices": {"monthly": "99", "quarterly": "269", "yearly": "936"},
                   "concurrency": 1_000, "rpm": 30_000, "priority": True},
    "flash-pro": {"name": "Flash Pro", "monthly_credits": 8_000_000_000,
                  "prices": {"monthly": "199", "quarterly": "539", "yearly": "1860"},
                  "concurrency": 5_000, "rpm": 150_000, "priority": True},
    "flash-max": {"name": "Flash Max", "monthly_credits": 40_000_000_000,
                  "prices": {"monthly": "699", "quarterly": "1889", "yearly": "6666"},
                  "concurrency": 20_000, "rpm": 600_000, "priority": True},
}
DEFAULT_PACKS: dict[str, dict[str, Any]] = {
    "small": {"name": "小油包 (small)", "credits": 400_000_000, "price": "49", "days": 30},
    "large": {"name": "大油包 (large)", "credits": 1_600_000_000, "price": "99", "days": 30},
}

_PLAN_KEYS = {"name", "monthly_credits", "prices", "concurrency", "rpm", "priority", "window_5h_credits",
              "window_week_credits"}
_PACK_KEYS = {"name", "credits", "price", "days"}


def fen(price: Any, where: str = "price") -> int:
    """CNY as an exact decimal string → integer fen."""
    try:
        d = Decimal(str(price).strip()) * 100
    except InvalidOperation as exc:
        raise ValueError(f"{where}: {price!r} is not a price") from exc
    if not d.is_finite() or d < 0 or d != d.to_integral_value():
        raise ValueError(f"{where}: {price!r} must be a non-negative amount with at most 2 decimals")
    return int(d)


def yuan(fen_amount: int) -> str:
    sign = "-" if fen_amount < 0 else ""
    q, r = divmod(abs(fen_amount), 100)
    return f"{sign}{q}.{r:02d}"


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    name: str
    monthly_credits: int  # micro-credits
    prices: dict[str, int]  # period → fen
    concurrency: int = 0
    rpm: int = 0
    priority: bool = False
    window_5h: int = 0  # micro-credits, 0 = off
    window_week: int = 0

    @property
    def rank(self) -> tuple[int, int]:
        return (self.monthly_credits, self.prices.get("monthly", 0))

    def price(self, period: str) -> int:
        return self.prices[period]


@dataclass(frozen=True, slots=True)
class Pack:
    id: str
    name: str
    credits: int  # micro-credits
    price: int  # fen
    days: int


@dataclass(frozen=True, slots=True)
class BillingConfig:
    enabled: bool = True
    plans: dict[str, Plan] = field(default_factory=dict)
    packs: dict[str, Pack] = field(default_factory=dict)
    reserve_output_tokens: int = 32_768
    reserve_cap: int = 16_000_000 * MICRO  # micro-credits
    lease_min: int = 1_000_000 * MICRO  # extra micro-credits leased beyond a call's need
    lease_max: int = 1_000_000_000 * MICRO
    lease_idle_seconds: float = 2.0
    # Seconds a settlement waits to share a commit. 0 = adaptive group commit: a batch is written as soon
    # as the writer is free, and settlements that arrive while it writes share the next commit, so an idle
    # gateway adds no wait and a busy one still batches.
    commit_interval: float = 0.0
    # When commits come back to back and carry few entries (streams ending one by one), wait until this long
    # after the previous commit so the next batch gathers more -- but only while other calls are in flight;
    # a quiet gateway, a single client calling back to back, or a gateway whose batches are already large
    # commits at once. Bounds the per-call share of transaction overhead under load.
    flush_gap: float = 0.002
    flush_small_batch: int = 8
    max_batch: int = 2_000
    heartbeat_seconds: float = 2.0
    owner_ttl_seconds: float = 30.0
    sweep_seconds: float = 5.0
    abandon_after_seconds: float = 7_200.0
    epoch_poll_seconds: float = 0.5

    @classmethod
    def from_raw(cls, raw: dict[str, Any] | None) -> BillingConfig:
        raw = dict(raw or {})
        plans_raw = {k: dict(v) for k, v in DEFAULT_PLANS.items()}
        for pid, over in (raw.pop("plans", None) or {}).items():
            plans_raw[pid] = {**plans_raw.get(pid, {}), **over}
        packs_raw = {k: dict(v) for k, v in DEFAULT_PACKS.items()}
        for pid, over in (raw.pop("packs", None) or {}).items():
            packs_raw[pid] = {**packs_raw.get(pid, {}), **over}
        plans = {pid: _plan(pid, p) for pid, p in plans_raw.items()}
        packs = {pid: _pack(pid, p) for pid, p in packs_raw.items()}
        kw: dict[str, Any] = {}
        simple = {
            "enabled": bool, "reserve_output_tokens": int, "lease_idle_seconds": float, "max_batch": int,
            "heartbeat_seconds": float, "owner_ttl_seconds": float, "sweep_seconds": float,
            "abandon_after_seconds": float, "epoch_poll_seconds": float,
        }
        for k, cast in simple.items():
            if k in raw:
                kw[k] = cast(raw.pop(k))
        for k, attr in (("reserve_cap_credits", "reserve_cap"), ("lease_min_credits", "lease_min"),
                        ("lease_max_credits", "lease_max")):
            if k in raw:
                kw[attr] = int(raw.pop(k)) * MICRO
        if "commit_interval_ms" in raw:
            kw["commit_interval"] = float(raw.pop("commit_interval_ms")) / 1000
        if "flush_gap_ms" in raw:
            kw["flush_gap"] = float(raw.pop("flush_gap_ms")) / 1000
        if raw:
            raise ValueError(f"billing: unknown keys {sorted(raw)}")
        cfg = cls(plans=plans, packs=packs, **kw)
        if cfg.reserve_output_tokens < 1 or cfg.reserve_cap <= 0 or cfg.lease_min < 0 or cfg.max_batch < 1:
            raise ValueError("billing: reserve_output_tokens, reserve_cap_credits and max_batch must be positive")
        return cfg

    def plan(self, plan_id: str) -> Plan:
        try:
            return self.plans[plan_id]
        except KeyError:
            raise ValueError(f"unknown plan {plan_id!r}; plans: {', '.join(self.plans)}") from None

    def pack(self, pack_id: str) -> Pack:
        try:
            return self.packs[pack_id]
        except KeyError:
            raise ValueError(f"unknown top-up pack {pack_id!r}; packs: {', '.join(self.packs)}") from None


def _plan(pid: str, p: dict[str, Any]) -> Plan:
    where = f"billing.plans.{pid}"
    unknown = set(p) - _PLAN_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    if "monthly_credits" not in p or "prices" not in p:
        raise ValueError(f"{where}: monthly_credits and prices are required")
    prices = {period: fen(v, f"{where}.prices.{period}") for period, v in dict(p["prices"]).items()}
    bad = set(prices) - set(PERIODS)
    if bad or not prices:
        raise ValueError(f"{where}.prices: periods must be among {', '.join(PERIODS)}")
    credits = int(p["monthly_credits"])
    if credits <= 0:
        raise ValueError(f"{where}.monthly_credits must be positive")
    return Plan(pid, str(p.get("name", pid)), credits * MICRO, prices, int(p.get("concurrency", 0)),
                int(p.get("rpm", 0)), bool(p.get("priority", False)), int(p.get("window_5h_credits", 0)) * MICRO,
                int(p.get("window_week_credits", 0)) * MICRO)


def _pack(pid: str, p: dict[str, Any]) -> Pack:
    where = f"billing.packs.{pid}"
    unknown = set(p) - _PACK_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    credits, days = int(p.get("credits", 0)), int(p.get("days", 30))
    if credits <= 0 or days <= 0:
        raise ValueError(f"{where}: credits and days must be positive")
    return Pack(pid, str(p.get("name", pid)), credits * MICRO, fen(p.get("price", "0"), f"{where}.price"), days)

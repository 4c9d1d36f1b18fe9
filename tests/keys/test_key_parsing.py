"""Unit tests: the per-key setting parsers, the client address behind trusted proxies, and the
calendar periods of a key's Credit limits."""

from __future__ import annotations

import ipaddress

import pytest

from stepplan.auth import address_allowed, client_address
from stepplan.billing.clock import parse_instant
from stepplan.billing.key_limits import period
from stepplan.key_settings import (
    parse_cidrs,
    parse_credits,
    parse_duration,
    parse_expires,
    parse_labels,
    parse_models,
    parse_since,
)
from stepplan.store.keys import KEY_DAY, KEY_MONTH, credits_exact

NOW = parse_instant("2026-12-05T10:00:00Z")
NETS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "2001:db8::/32"))
TRUSTED = tuple(ipaddress.ip_network(n) for n in ("127.0.0.1/32", "172.16.0.0/12"))


def test_durations_and_expiry() -> None:
    assert [parse_duration(x, "grace") for x in ("30d", "24h", "90m", "3600s", "2w", "0s")] == [
        2_592_000, 86_400, 5_400, 3_600, 1_209_600, 0]
    assert parse_expires("30d", NOW) == NOW + 30 * 86_400
    assert parse_expires("2027-01-01", NOW) == parse_instant("2027-01-01T00:00:00Z")
    for bad, words in (("0d", "positive"), ("2026-01-01", "in the past"), ("soon", "ISO date"), ("3y", "ISO date")):
        with pytest.raises(ValueError, match=words):
            parse_expires(bad, NOW)


def test_credits_are_exact() -> None:
    assert parse_credits("12.5", "x") == 12_500_000 and parse_credits(50, "x") == 50_000_000
    assert credits_exact(12_500_000) == "12.5" and credits_exact(50_000_000) == "50" and credits_exact(1) == "0.000001"
    for bad in ("0", "-1", "1.0000001", "NaN", "lots", 1.5, True, "1e30"):
        with pytest.raises(ValueError):
            parse_credits(bad, "credit_limit_daily")


def test_models_cidrs_labels_since() -> None:
    known = ["step-3.5-flash", "step-router-v1"]
    assert parse_models("step-router-v1, step-3.5-flash,step-router-v1", known) == ["step-router-v1", "step-3.5-flash"]
    with pytest.raises(ValueError, match="'gpt-5' is not a model"):
        parse_models(["gpt-5"], known)
    assert parse_cidrs("10.1.2.3/8, 2001:db8::1") == ["10.0.0.0/8", "2001:db8::1/128"]
    with pytest.raises(ValueError, match="not an IP"):
        parse_cidrs(["10.0.0.0/33"])
    assert parse_labels(["team=ci", "env = prod"]) == {"team": "ci", "env": "prod"}
    for bad in (["team"], ["=x"], {"k": 1}, ["a b=c"]):
        with pytest.raises(ValueError):
            parse_labels(bad)
    assert parse_since("24h", NOW) == NOW - 86_400 and parse_since(None, NOW) is None
    assert parse_since("2026-12-01", NOW) == parse_instant("2026-12-01")


def test_address_allowlist() -> None:
    assert address_allowed("10.200.0.1", NETS) and address_allowed("2001:db8::5", NETS)
    assert address_allowed("::ffff:10.0.0.1", NETS)  # an IPv4 client on a dual-stack socket
    assert not address_allowed("11.0.0.1", NETS) and not address_allowed("garbage", NETS)
    assert not address_allowed(None, NETS)


def test_client_address_walks_x_forwarded_for_right_to_left() -> None:
    assert client_address("127.0.0.1", None, TRUSTED) == "127.0.0.1"
    assert client_address("127.0.0.1", "10.1.1.1", TRUSTED) == "10.1.1.1"
    # the client can prepend anything: only the hops the trusted proxies added count
    assert client_address("127.0.0.1", "10.9.9.9, 203.0.113.5, 172.16.3.4", TRUSTED) == "203.0.113.5"
    assert client_address("127.0.0.1", "172.16.0.1, 172.16.0.2", TRUSTED) == "172.16.0.1"  # all trusted
    assert client_address("203.0.113.7", "10.1.1.1", TRUSTED) == "203.0.113.7"  # untrusted peer: ignored
    assert client_address("127.0.0.1", "10.1.1.1", ()) == "127.0.0.1"  # no trusted proxies configured
    assert client_address("127.0.0.1", "not-an-ip, 172.16.0.9", TRUSTED) == "not-an-ip"


@pytest.mark.parametrize(("at", "kind", "start", "end"), [
    ("2026-12-05T10:00:00Z", KEY_DAY, "2026-12-05", "2026-12-06"),
    ("2026-12-31T23:59:59Z", KEY_DAY, "2026-12-31", "2027-01-01"),
    ("2026-12-05T10:00:00Z", KEY_MONTH, "2026-12-01", "2027-01-01"),
    ("2028-02-29T12:00:00Z", KEY_MONTH, "2028-02-01", "2028-03-01"),
    ("2026-01-31T23:59:59Z", KEY_MONTH, "2026-01-01", "2026-02-01"),
])
def test_limit_periods_are_calendar_days_and_months(at: str, kind: str, start: str, end: str) -> None:
    _, s, e = period(kind, parse_instant(at))
    assert (s, e) == (parse_instant(start), parse_instant(end))


def test_trusted_proxies_are_checked_at_start_up(tmp_path) -> None:
    from stepplan.settings import ConfigError, load_settings

    cfg = tmp_path / "stepplan.toml"
    cfg.write_text('[server]\ntrusted_proxies = ["10.0.0.0/8", "::1"]\n')
    assert load_settings(cfg, env={}).server.trusted_proxies == ["10.0.0.0/8", "::1"]
    cfg.write_text('[server]\ntrusted_proxies = ["10.0.0.0/8", "proxy.local"]\n')
    with pytest.raises(ConfigError, match=r"trusted_proxies\[1\].*'proxy.local' is not an IP"):
        load_settings(cfg, env={})

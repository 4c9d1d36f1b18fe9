"""The console in a real browser: Playwright driving Debian's Chromium (``scripts/browser.sh``
installs it; ``playwright install`` cannot download browsers here). Every page is checked for
Content-Security-Policy violations (the console has no inline script or style) and saved as a
screenshot under ``artifacts/console/`` (the path is printed at the end of the run)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway
from tests.console.conftest import ADMIN, ARTIFACTS, chat, usage, wait_calls

CHROMIUM = os.environ.get("STEPPLAN_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is missing: run scripts/browser.sh (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"console screenshots: {ARTIFACTS}")


class Tab:
    """A browser page on one gateway that records CSP violations and takes named screenshots."""

    def __init__(self, browser: Any, gw: Gateway, ip: str, lang: str = "en-US"):
        self.gw = gw
        self.ctx = browser.new_context(viewport={"width": 1280, "height": 900}, locale=lang,
                                       extra_http_headers={"x-forwarded-for": ip})
        self.page = self.ctx.new_page()
        self.violations: list[str] = []
        self.page.on("console", lambda m: self.violations.append(m.text)
                     if "Content Security Policy" in m.text or "Refused to" in m.text else None)

    def go(self, path: str) -> Any:
        resp = self.page.goto(self.gw.url + path)
        assert not self.violations, self.violations
        return resp

    def shot(self, name: str) -> None:
        assert not self.violations, self.violations
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.ctx.close()


def test_key_holder_sees_residual_and_chart_after_calls(browser: Any, cgw: Gateway) -> None:
    key = cgw.new_key("b-holder")
    traces = [chat(cgw, key) for _ in range(4)]
    view = wait_calls(cgw, key, 4)
    tab = Tab(browser, cgw, "10.8.0.1")
    tab.go("/console")
    assert tab.page.url.endswith("/console/signin")
    tab.page.fill("#api_key", key)
    tab.page.click("#signin")
    tab.page.wait_for_url("**/console/overview")
    residual = view["plan_credit_rate_limit"]["credit_buckets"][0]["credit_residual_micro"]
    row = tab.page.locator(f'#buckets tr[data-residual-micro="{residual}"]')
    assert row.count() == 1
    whole, frac = divmod(int(residual), 1_000_000)
    shown = f"{whole:,}" + (f".{frac:06d}".rstrip("0") if frac else "")
    assert row.locator(".residual").inner_text() == shown
    tab.shot("overview")
    tab.go("/console/usage?days=7")
    rects = tab.page.locator("#credit-chart rect[data-series]")
    values = [float(rects.nth(i).get_attribute("data-value") or 0) for i in range(rects.count())]
    consumed = sum(int(r["credit_consumed_micro"]) for r in usage(cgw, key)["usage"]["records"])
    assert values and abs(sum(values) - consumed / 1e6) < 1e-6 * len(values) + 1e-9
    assert tab.page.locator("#model-totals tr[data-model='step-3.5-flash'] td").nth(2).inner_text() == "4"
    tab.shot("usage")
    tab.go("/console/calls")
    assert tab.page.locator("#calls tr[data-trace]").count() == 4
    tab.page.fill("#trace", traces[1])
    tab.page.click("#filter")
    tab.page.wait_for_url(re.compile(r".*trace=.*"))
    assert [tab.page.locator("#calls tr[data-trace]").nth(0).get_attribute("data-trace")] == [traces[1]]
    tab.go("/console/calls")
    tab.shot("calls")
    tab.go("/console/setup")
    assert tab.page.locator("#base-url").inner_text() == cgw.url
    assert f"{cgw.url}/step_plan" in tab.page.locator("#snippet-claude-code").inner_text()
    tab.page.locator("button.copy").first.click()
    tab.page.wait_for_selector("button.copy[data-copied='1']")
    tab.shot("setup")
    tab.go("/console/overview?lang=zh")
    assert "剩余 Credit" in tab.page.content()
    tab.shot("overview-zh")
    tab.close()


def test_create_and_revoke_a_key_in_the_browser(browser: Any, cgw: Gateway) -> None:
    key = cgw.new_key("b-keys")
    tab = Tab(browser, cgw, "10.8.0.2")
    tab.go("/console/signin")
    tab.page.fill("#api_key", key)
    tab.page.click("#signin")
    tab.page.wait_for_url("**/console/overview")
    tab.go("/console/keys")
    tab.page.fill("#key-name", "ci laptop")
    tab.page.click("#create-key")
    new_key = tab.page.locator("#new-key").inner_text().strip()
    assert new_key.startswith("sk-step-")
    assert chat(cgw, new_key)
    tab.shot("keys")
    row = tab.page.locator("#keys tr", has_text="ci laptop")
    row.locator("button.danger").click()
    tab.page.wait_for_url("**/console/keys")
    assert "ci laptop" in tab.page.locator("#keys").inner_text()
    r = httpx.post(f"{cgw.openai_base}/chat/completions", headers={"authorization": f"Bearer {new_key}"},
                   json={"model": "step-3.5-flash", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 401
    assert new_key not in tab.page.content()
    tab.close()


def test_operator_subscribes_and_tops_up(browser: Any, cgw: Gateway) -> None:
    tab = Tab(browser, cgw, "10.8.0.3")
    tab.go("/console/admin/signin")
    tab.page.fill("#admin_token", ADMIN)
    tab.page.click("#signin")
    tab.page.wait_for_url("**/console/admin/accounts")
    tab.page.fill("#account-name", "b-customer")
    tab.page.click("#create-account")
    tab.page.wait_for_url("**/console/admin/accounts/b-customer")
    tab.page.select_option("#plan-select", "flash-pro")
    tab.page.select_option("#period-select", "monthly")
    tab.page.click("#preview-subscribe")
    assert tab.page.locator("#amount-due").inner_text() == "¥199.00"
    tab.shot("admin-preview")
    tab.page.click("#confirm")
    tab.page.wait_for_url("**/console/admin/accounts/b-customer?done=subscribed")
    assert tab.page.locator('#buckets tr[data-kind="subscription"]').count() == 1
    assert tab.page.locator('#buckets tr[data-kind="topup"]').count() == 0
    tab.page.select_option("#pack-select", "large")
    tab.page.click("#preview-topup")
    assert tab.page.locator("#amount-due").inner_text() == "¥99.00"
    tab.page.click("#confirm")
    tab.page.wait_for_url("**/console/admin/accounts/b-customer?done=topup")
    topup = tab.page.locator('#buckets tr[data-kind="topup"]')
    large = 1_600_000_000 * 1_000_000  # the default large pack, in micro-credits
    assert topup.count() == 1 and topup.get_attribute("data-residual-micro") == str(large)
    tab.shot("admin-account")
    tab.go("/console/admin/accounts")
    tab.shot("admin-accounts")
    tab.go("/console/admin/keys")
    tab.shot("admin-keys")
    tab.go("/console/admin/ledger")
    tab.shot("admin-ledger")
    tab.page.click("#run-check")
    tab.page.wait_for_url("**/console/admin/ledger/check")
    assert tab.page.locator("#check-result").get_attribute("data-ok") == "true"
    tab.shot("admin-check")
    tab.go("/console/admin/health")
    assert tab.page.locator('#readiness tr[data-check="database"]').get_attribute("data-ok") == "true"
    tab.shot("admin-health")
    tab.close()


def test_wrong_key_and_csrf_less_post_refused_in_the_browser(browser: Any, cgw: Gateway) -> None:
    key = cgw.new_key("b-refused")
    tab = Tab(browser, cgw, "10.8.0.4")
    tab.go("/console/signin")
    tab.shot("signin")
    tab.page.fill("#api_key", "sk-step-wrong")
    tab.page.click("#signin")
    assert "not valid" in tab.page.locator("#error-message").inner_text()
    tab.shot("error")
    tab.go("/console/signin")
    tab.page.fill("#api_key", key)
    tab.page.click("#signin")
    tab.page.wait_for_url("**/console/overview")
    tab.go("/console/keys")
    tab.page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
    tab.page.fill("#key-name", "forged")
    with tab.page.expect_navigation() as nav:
        tab.page.click("#create-key")
    assert nav.value.status == 403
    assert "CSRF" in tab.page.locator("#error-message").inner_text()
    keys = httpx.get(f"{cgw.url}/admin/v1/keys", params={"account": "b-refused"},
                     headers={"authorization": f"Bearer {ADMIN}"}).json()["data"]
    assert [k["name"] for k in keys if k["name"] == "forged"] == []
    tab.close()


def test_operator_sets_a_key_limit_in_the_browser(browser: Any, cgw: Gateway) -> None:
    key = cgw.new_key("b-limits")
    rows = httpx.get(f"{cgw.url}/admin/v1/keys", params={"account": "b-limits"},
                     headers={"authorization": f"Bearer {ADMIN}"}).json()["data"]
    kid = rows[0]["id"]
    tab = Tab(browser, cgw, "10.8.0.5")
    tab.go("/console/admin/signin")
    tab.page.fill("#admin_token", ADMIN)
    tab.page.click("#signin")
    tab.page.wait_for_url("**/console/admin/accounts")
    tab.go(f"/console/admin/keys/{kid}")
    tab.page.fill("#set-models", "step-router-v1")
    tab.page.fill("#set-rpm", "30")
    tab.page.click("#save-limits")
    tab.page.wait_for_url(f"**/console/admin/keys/{kid}?done=updated")
    assert tab.page.locator('[data-setting="models"]').inner_text() == "step-router-v1"
    assert tab.page.locator('[data-setting="rpm"]').inner_text() == "30"
    tab.shot("admin-key")
    r = httpx.post(f"{cgw.openai_base}/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                   json={"model": "step-3.5-flash", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    tab.close()

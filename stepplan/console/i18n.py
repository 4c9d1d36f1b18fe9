"""The console's two languages: English and Chinese (Step Plan's users read Chinese first).

The language is ``?lang=`` (remembered in a cookie), else the cookie, else the browser's
``Accept-Language`` (Chinese when it prefers ``zh`` to ``en``), else English.
"""

from __future__ import annotations

LANGS = ("en", "zh")
LANG_COOKIE = "stepplan_lang"

# msgid → (English, Chinese)
MESSAGES: dict[str, tuple[str, str]] = {
    "console": ("Step Plan console", "Step Plan 控制台"),
    "signin": ("Sign in", "登录"),
    "signout": ("Sign out", "退出登录"),
    "signin_key": ("Sign in with your API key", "使用 API Key 登录"),
    "signin_admin": ("Operator sign-in", "运营者登录"),
    "api_key": ("API key", "API Key"),
    "admin_token": ("Admin token", "管理员令牌"),
    "operator_link": ("Operator? Sign in with the admin token", "运营者？使用管理员令牌登录"),
    "holder_link": ("Key holder? Sign in with an API key", "Key 持有者？使用 API Key 登录"),
    "overview": ("Overview", "概览"),
    "usage": ("Usage", "用量"),
    "calls": ("Calls", "调用记录"),
    "api_keys": ("Keys", "API Keys"),
    "setup": ("Set-up", "接入配置"),
    "accounts": ("Accounts", "账户"),
    "ledger": ("Ledger", "账本"),
    "health": ("Health", "健康状态"),
    "account": ("Account", "账户"),
    "plan": ("Plan", "套餐"),
    "period": ("Period", "周期"),
    "term": ("Term", "有效期"),
    "no_plan": ("No active subscription.", "当前没有生效的订阅。"),
    "auto_renew": ("Auto-renew", "自动续费"),
    "pending_plan": ("Downgrade at next cycle to", "下个周期降级为"),
    "credit_left": ("Credit left", "剩余 Credit"),
    "buckets": ("Credit buckets", "Credit 额度包"),
    "bucket": ("Bucket", "额度包"),
    "kind_subscription": ("Monthly pool", "月度额度"),
    "kind_topup": ("Top-up pack", "加油包"),
    "residual": ("Residual", "剩余"),
    "total": ("Total", "总额"),
    "left_rate": ("Left", "剩余比例"),
    "expires": ("Expires", "过期时间"),
    "next_reset": ("Next reset", "下次重置"),
    "in_flight": ("In flight", "进行中"),
    "windows": ("Usage windows", "用量窗口"),
    "window_5h": ("5-hour window", "5 小时窗口"),
    "window_week": ("Weekly window", "每周窗口"),
    "resets": ("Resets", "重置时间"),
    "at_402": ("When a call gets 402 (out of Credit)", "调用返回 402（Credit 用尽）时"),
    "at_402_text": ("Your buckets are empty or a usage window is used up. Ask your operator for a top-up "
                    "pack (valid from the moment it is added) or an upgrade to a larger plan (pro-rated); "
                    "a usage window refills at its reset time shown above.",
                    "额度包已用完或用量窗口已达上限。请联系运营者购买加油包（添加后立即生效），或升级到更大的套餐"
                    "（按剩余时间折算）；用量窗口会在上方显示的重置时间恢复。"),
    "range": ("Range", "时间范围"),
    "days_7": ("7 days", "7 天"),
    "days_30": ("30 days", "30 天"),
    "days_90": ("90 days", "90 天"),
    "apply": ("Apply", "应用"),
    "credit_per_day": ("Credit per day, by served model", "每日 Credit 消耗（按实际服务模型）"),
    "tokens_per_day": ("Tokens per day, by type", "每日 Token（按类型）"),
    "per_model": ("Per-model totals", "按模型汇总"),
    "router_split": ("step-router-v1 calls by serving engine", "step-router-v1 调用（按实际服务引擎）"),
    "model": ("Model", "模型"),
    "requested_model": ("Requested", "请求模型"),
    "served_model": ("Served by", "服务模型"),
    "n_calls": ("Calls", "调用次数"),
    "credit": ("Credit", "Credit"),
    "tokens": ("Tokens", "Token"),
    "input": ("Input", "输入"),
    "cache_read": ("Cache read", "缓存读取"),
    "cache_write": ("Cache write", "缓存写入"),
    "output": ("Output", "输出"),
    "reasoning": ("Reasoning", "推理"),
    "day": ("Day", "日期"),
    "no_data": ("No calls in this range.", "该时间范围内没有调用。"),
    "time": ("Time", "时间"),
    "status": ("Status", "状态"),
    "duration": ("Duration", "耗时"),
    "trace_id": ("Trace id", "Trace ID"),
    "filter": ("Filter", "筛选"),
    "search": ("Search", "搜索"),
    "any": ("any", "全部"),
    "older": ("Older calls", "更早的调用"),
    "name": ("Name", "名称"),
    "prefix": ("Prefix", "前缀"),
    "created": ("Created", "创建时间"),
    "last_used": ("Last used", "最近使用"),
    "limits": ("Limits", "限制"),
    "revoked": ("Revoked", "已吊销"),
    "active": ("Active", "有效"),
    "never": ("never", "从未"),
    "create_key": ("Create a key", "创建 Key"),
    "create": ("Create", "创建"),
    "revoke": ("Revoke", "吊销"),
    "new_key_once": ("Your new key. It is shown only once: copy it now.", "新 Key 仅显示这一次，请立即复制。"),
    "copy_btn": ("Copy", "复制"),
    "copied": ("Copied", "已复制"),
    "self_service_off": ("Key self-service is off on this gateway: ask your operator for keys.",
                         "本网关未开启 Key 自助管理，请联系运营者。"),
    "this_key": ("(this session)", "（当前会话）"),
    "setup_intro": ("Copy a configuration; replace sk-step-YOUR-KEY with your key. Base URL of this gateway:",
                    "复制下面的配置，把 sk-step-YOUR-KEY 换成你的 Key。本网关地址："),
    "plan_limits": ("Plan limits", "套餐限制"),
    "concurrency": ("Concurrency", "并发"),
    "rpm": ("Requests per minute", "每分钟请求数"),
    "create_account": ("Create an account", "创建账户"),
    "subscribe": ("Subscribe / upgrade / downgrade", "订阅 / 升级 / 降级"),
    "topup": ("Add a top-up pack", "添加加油包"),
    "pack": ("Pack", "加油包"),
    "preview": ("Preview", "预览"),
    "confirm": ("Confirm", "确认"),
    "cancel": ("Cancel", "取消"),
    "preview_title": ("Check before confirming", "确认前请核对"),
    "action": ("Action", "操作"),
    "amount_due": ("Amount due", "应付金额"),
    "old_unused": ("Unused value of the current term credited", "当前套餐未使用部分抵扣"),
    "price": ("Price", "价格"),
    "credits_added": ("Credit added", "增加 Credit"),
    "valid_days": ("Valid days", "有效天数"),
    "done": ("Done", "已完成"),
    "run_check": ("Run the ledger check", "运行账本校验"),
    "check_ok": ("The ledger is consistent.", "账本一致。"),
    "check_bad": ("The ledger check found problems:", "账本校验发现问题："),
    "stats": ("Statistics", "统计"),
    "upstreams": ("Upstreams", "上游"),
    "member": ("Member", "成员"),
    "state": ("State", "状态"),
    "errors": ("Errors", "错误"),
    "router": ("Router", "路由"),
    "pro_share_target": ("Pro share, target", "Pro 占比（目标）"),
    "pro_share_observed": ("Pro share, observed (last 24 h)", "Pro 占比（最近 24 小时实际）"),
    "readiness": ("Readiness checks", "就绪检查"),
    "ok": ("ok", "正常"),
    "failing": ("failing", "异常"),
    "error": ("Error", "错误"),
    "back": ("Back", "返回"),
    "from": ("From", "开始"),
    "to": ("To", "结束"),
    "entries": ("Entries", "条目"),
    "charged": ("Charged", "扣除"),
    "uncollected": ("Uncollected", "未收取"),
    "protocol": ("Protocol", "协议"),
    "label": ("Label", "标签"),
    "optional": ("optional", "可选"),
    "all_accounts": ("All accounts", "全部账户"),
    "open": ("Open", "打开"),
    "monthly": ("monthly", "月付"),
    "quarterly": ("quarterly", "季付"),
    "yearly": ("yearly", "年付"),
    "signed_in_as": ("Signed in as", "当前账户"),
    "operator": ("Operator", "运营者"),
    "read_only": ("read-only", "只读"),
    "read_only_note": ("Signed in with a read token: these pages are read-only.",
                       "当前使用只读令牌登录：页面仅可查看。"),
    "expired": ("Expired", "已过期"),
    "rotated": ("Rotated (in grace)", "已轮换（宽限期内）"),
    "replaced": ("Replaced", "已被替换"),
    "key": ("Key", "Key"),
    "models": ("Models", "模型"),
    "credit_limit_daily": ("Credit per day", "每日 Credit 上限"),
    "credit_limit_monthly": ("Credit per month", "每月 Credit 上限"),
    "ip": ("IP allowlist", "IP 白名单"),
    "labels": ("Labels", "标签"),
    "replaced_by": ("Replaced by key", "替换为 Key"),
    "no_limits": ("none (the plan's limits apply)", "无（按套餐限制）"),
    "set_limits": ("Set or clear limits", "设置或清除限制"),
    "set_limits_help": ("A blank field leaves the setting as it is; tick “clear” to remove it. Expiry: a date "
                        "(2027-01-01), a date-time or a duration (30d). Models and IP networks: separated by commas. "
                        "Labels: key=value, one per line (added to the key's labels).",
                        "留空表示不修改；勾选“清除”表示删除该限制。过期时间：日期（2027-01-01）、日期时间或时长（30d）。"
                        "模型和 IP 网段用逗号分隔。标签：每行一个 key=value（合并到已有标签）。"),
    "clear_setting": ("clear", "清除"),
    "save": ("Save", "保存"),
    "rotate": ("Rotate", "轮换"),
    "rotate_help": ("A new key with the same settings, shown once; the old key keeps working for the grace "
                    "(0s: revoked at once).",
                    "生成设置相同的新 Key（仅显示一次）；旧 Key 在宽限期内仍可用（0s：立即吊销）。"),
    "grace": ("Grace", "宽限期"),
    "rotated_from": ("Replaces key", "替换 Key"),
    "old_key_until": ("The old key works until", "旧 Key 有效至"),
    "old_key_revoked": ("The old key is revoked.", "旧 Key 已吊销。"),
    "stop_renewal": ("Stop auto-renewal", "取消自动续费"),
    "stop_renewal_help": ("The term runs to its end; no refund.", "当前周期仍有效至结束，不退款。"),
    "details": ("Details", "详情"),
    "known_models": ("Models of this gateway", "本网关的模型"),
}


def pick(query: str | None, cookie: str | None, accept_language: str | None) -> tuple[str, bool]:
    """(language, whether to remember it in the cookie)."""
    if query in LANGS:
        return query, query != cookie
    if cookie in LANGS:
        return cookie, False
    return prefers(accept_language or ""), False


def prefers(header: str) -> str:
    """``zh`` when Accept-Language ranks Chinese above English, else ``en``."""
    best: dict[str, float] = {}
    for part in header.split(","):
        tag, _, params = part.strip().partition(";")
        base = tag.strip().lower().split("-")[0]
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if base in LANGS and q > best.get(base, -1.0):
            best[base] = q
    zh, en = best.get("zh", -1.0), best.get("en", -1.0)
    return "zh" if zh > 0 and zh > en else "en"


def translator(lang: str) -> dict[str, str]:
    i = 1 if lang == "zh" else 0
    return {k: v[i] for k, v in MESSAGES.items()}

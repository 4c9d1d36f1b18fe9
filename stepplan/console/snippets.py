"""Copy-paste set-ups for the Set-up page, with this gateway's base URL filled in. The shapes
are the ones docs/agents.md and docs/anthropic.md document (and tests/agents runs)."""

from __future__ import annotations

import json

KEY = "sk-step-YOUR-KEY"


def snippets(base: str, model: str) -> list[tuple[str, str, str]]:
    """(id, title, text) for each client."""
    v1 = f"{base}/step_plan/v1"
    anth = f"{base}/step_plan"
    claude = json.dumps({"env": {"ANTHROPIC_BASE_URL": anth, "ANTHROPIC_AUTH_TOKEN": KEY, "ANTHROPIC_MODEL": model,
                                 "ANTHROPIC_SMALL_FAST_MODEL": model, "DISABLE_TELEMETRY": "1",
                                 "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}}, indent=2)
    models = {model: {"name": model, "tool_call": True, "reasoning": True, "attachment": True,
                      "limit": {"context": 128000, "output": 8192}}}
    opencode = json.dumps({"$schema": "https://opencode.ai/config.json", "provider": {
        "stepplan": {"npm": "@ai-sdk/openai-compatible", "name": "Step Plan",
                     "options": {"baseURL": v1, "apiKey": KEY}, "models": models},
        "stepplan-a": {"npm": "@ai-sdk/anthropic", "name": "Step Plan (Anthropic protocol)",
                       "options": {"baseURL": v1, "apiKey": KEY}, "models": models}},
        "model": f"stepplan/{model}"}, indent=2)
    openai_sdk = (f'from openai import OpenAI\n\nclient = OpenAI(base_url="{v1}", api_key="{KEY}")\n'
                  f'r = client.chat.completions.create(model="{model}",\n'
                  f'    messages=[{{"role": "user", "content": "hi"}}])\nprint(r.choices[0].message.content)')
    anthropic_sdk = (f'from anthropic import Anthropic\n\nclient = Anthropic(base_url="{anth}", api_key="{KEY}")\n'
                     f'r = client.messages.create(model="{model}", max_tokens=1024,\n'
                     f'    messages=[{{"role": "user", "content": "hi"}}])\nprint(r.content[0].text)')
    hermes = (f"# ~/.hermes/config.yaml\nmodel:\n  provider: stepfun\n  default: {model}\nsecurity:\n"
              f"  allow_lazy_installs: false\n\n"
              f'STEPFUN_API_KEY={KEY} STEPFUN_BASE_URL={v1} hermes -z "say hi"')
    openclaw = json.dumps({"models": {"mode": "merge", "providers": {"stepfun-plan": {
        "baseUrl": v1, "models": [{"id": model, "name": model, "reasoning": True, "input": ["text"],
                                   "contextWindow": 262144, "maxTokens": 65536,
                                   "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                                   "compat": {"supportsReasoningEffort": True}}]}}},
        "agents": {"defaults": {"model": {"primary": f"stepfun-plan/{model}"}}}}, indent=2)
    openclaw = (f"// ~/.openclaw/openclaw.json\n{openclaw}\n\n"
                f'export STEPFUN_API_KEY={KEY}\nopenclaw agent --local --agent main -m "say hi"')
    curl = (f"curl {v1}/chat/completions \\\n  -H 'Authorization: Bearer {KEY}' \\\n"
            f"  -H 'Content-Type: application/json' \\\n"
            f"  -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}]}}'\n\n"
            f"curl {anth}/v1/messages \\\n  -H 'x-api-key: {KEY}' -H 'anthropic-version: 2023-06-01' \\\n"
            f"  -H 'Content-Type: application/json' \\\n"
            f"  -d '{{\"model\": \"{model}\", \"max_tokens\": 256, "
            f"\"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}]}}'\n\n"
            f"curl -H 'Authorization: Bearer {KEY}' {v1}/usage")
    return [
        ("claude-code", "Claude Code — ~/.claude/settings.json", claude),
        ("opencode", "OpenCode — opencode.json", opencode),
        ("openai-sdk", "OpenAI SDK (Python)", openai_sdk),
        ("anthropic-sdk", "Anthropic SDK (Python)", anthropic_sdk),
        ("hermes", "Hermes Agent", hermes),
        ("openclaw", "OpenClaw", openclaw),
        ("curl", "curl", curl),
    ]

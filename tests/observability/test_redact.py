"""Log scrubbing, unit level: keys, bearer tokens, key=value pairs and configured secrets."""

from __future__ import annotations

import logging

import orjson

from stepplan.logs import REDACTED, JSONFormatter, RedactingFormatter, add_secrets, redact


def test_redact_patterns() -> None:
    add_secrets(["upstream-secret-value"])
    line = ("key sk-step-AbCdEf0123456789 auth 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x.y' "
            "api_key=abcdef123456 x-api-key: zzzzzzzzzz echoed upstream-secret-value")
    out = redact(line)
    for secret in ("sk-step-AbCdEf0123456789", "eyJhbGciOiJIUzI1NiJ9", "abcdef123456", "zzzzzzzzzz",
                   "upstream-secret-value"):
        assert secret not in out, (secret, out)
    assert out.count(REDACTED) >= 5
    assert redact("model=step-3.5-flash status=ok in=11") == "model=step-3.5-flash status=ok in=11"


def test_formatters_scrub_every_record() -> None:
    rec = logging.LogRecord("stepplan.api", logging.WARNING, __file__, 1, "upstream said: %s",
                            ("bad key sk-abc123456789",), None)
    assert "sk-abc123456789" not in RedactingFormatter("%(message)s").format(rec)
    doc = orjson.loads(JSONFormatter().format(rec))
    assert doc["level"] == "WARNING" and doc["logger"] == "stepplan.api"
    assert "sk-abc123456789" not in doc["message"] and REDACTED in doc["message"]

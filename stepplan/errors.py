"""The gateway's exception tree. Every error knows how it looks in each protocol.

    GatewayError                      (status, StepFun code, Anthropic type)
    ├── InvalidRequest                400 request_params_invalid     invalid_request_error
    │   └── UnsupportedContent        400 unsupported_content_type   invalid_request_error
    ├── NoSubscription                400 no_active_subscription     invalid_request_error
    ├── AuthError                     401 invalid_api_key            authentication_error
    ├── QuotaExceeded                 402 quota_exceeded             billing_error
    ├── PermissionDenied              403 permission_denied          permission_error
    ├── NotFound                      404 not_found                  not_found_error
    │   └── ModelNotFound             404 model_not_found            not_found_error
    ├── RequestTimeout                408 request_timeout            invalid_request_error
    ├── PayloadTooLarge               413 request_too_large          request_too_large
    ├── HeadersTooLarge               431 request_params_invalid     invalid_request_error
    ├── RateLimited                   429 rate_limit_exceeded        rate_limit_error
    ├── UpstreamError                 502 upstream_error             api_error
    │   └── UpstreamTimeout           504 upstream_timeout           api_error
    ├── Overloaded                    503 server_overloaded          overloaded_error
    └── ClientClosed                  499 client_closed_request      api_error
"""

from __future__ import annotations

from typing import Any

from .redact import redact


class GatewayError(Exception):
    status = 500
    code = "internal_error"
    anthropic_type = "api_error"
    # True for upstream failures another engine may recover from before the first byte
    # (connect errors, timeouts, 429 and 5xx answers): the router's fallback uses it.
    fallback_ok = False

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def openai_body(self, trace_id: str) -> dict[str, Any]:
        # Error texts can quote what others sent (an upstream's error, a client's value): credential-shaped
        # text and the configured secrets never reach a client (stepplan.redact, as in the logs).
        return {
            "error": {
                "message": redact(self.message),
                "type": self.code,
                "code": self.code,
                "param": self.param,
                "trace_id": trace_id,
            }
        }

    def anthropic_body(self, trace_id: str) -> dict[str, Any]:
        message = redact(self.message)
        return {
            "type": "error",
            "error": {"type": self.anthropic_type, "message": message if message.startswith(
                f"{self.code}:") else f"{self.code}: {message}"},
            "request_id": trace_id,
        }


class InvalidRequest(GatewayError):
    status = 400
    code = "request_params_invalid"
    anthropic_type = "invalid_request_error"


class UnsupportedContent(InvalidRequest):
    code = "unsupported_content_type"


class NoSubscription(GatewayError):
    status = 400
    code = "no_active_subscription"
    anthropic_type = "invalid_request_error"


class AuthError(GatewayError):
    status = 401
    code = "invalid_api_key"
    anthropic_type = "authentication_error"


class QuotaExceeded(GatewayError):
    status = 402
    code = "quota_exceeded"
    anthropic_type = "billing_error"


class PermissionDenied(GatewayError):
    status = 403
    code = "permission_denied"
    anthropic_type = "permission_error"


class NotFound(GatewayError):
    status = 404
    code = "not_found"
    anthropic_type = "not_found_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RequestTimeout(GatewayError):
    """The client did not send its request's headers or body in time (stepplan.http_guard)."""

    status = 408
    code = "request_timeout"
    anthropic_type = "invalid_request_error"


class HeadersTooLarge(InvalidRequest):
    status = 431


class PayloadTooLarge(GatewayError):
    status = 413
    code = "request_too_large"
    anthropic_type = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    code = "rate_limit_exceeded"
    anthropic_type = "rate_limit_error"


class UpstreamError(GatewayError):
    status = 502
    code = "upstream_error"
    anthropic_type = "api_error"
    fallback_ok = True  # connect errors, broken streams, timeouts

    def __init__(self, message: str, *, upstream_status: int | None = None, retry_after: float | None = None,
                 **kw: Any):
        super().__init__(message, **kw)
        self.upstream_status = upstream_status
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ClientClosed(GatewayError):
    """The client went away; nobody reads this error (nginx's 499 by convention)."""

    status = 499
    code = "client_closed_request"
    anthropic_type = "api_error"


class Overloaded(GatewayError):
    status = 503
    code = "server_overloaded"
    anthropic_type = "overloaded_error"


def upstream_error_for_status(status: int, message: str, retry_after: float | None = None) -> GatewayError:
    """Map an upstream HTTP failure to what our caller should see."""
    err: GatewayError
    if status in (400, 422):
        return InvalidRequest(f"upstream rejected the request: {message}")
    if status == 429:
        err = RateLimited(f"upstream rate limit: {message}", headers=_retry_headers(retry_after))
    elif status == 504:
        err = UpstreamTimeout(f"upstream timed out: {message}", upstream_status=status)
    elif status in (503, 529):  # 529: Anthropic-protocol upstreams' "overloaded"
        err = Overloaded(f"upstream overloaded: {message}", headers=_retry_headers(retry_after))
    else:
        err = UpstreamError(f"upstream error {status}: {message}", upstream_status=status, retry_after=retry_after)
    err.fallback_ok = status == 429 or status >= 500
    return err


def _retry_headers(retry_after: float | None) -> dict[str, str]:
    return {"retry-after": str(max(1, int(retry_after)))} if retry_after else {}

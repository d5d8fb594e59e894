"""One error hierarchy for everything a caller can be told.

Every error that can reach a client is a ``ShipwayError``. Each subclass carries the HTTP
status and the OpenAI error ``type``/``code`` it maps to; ``api/errors.py`` renders them as
the OpenAI error envelope in exactly one handler. Library errors (aiohttp, llama.cpp,
pydantic) are translated into these at the boundary where they happen, with ``raise … from``.

    ShipwayError                      500 server_error
    ├── InvalidRequest                400 invalid_request_error
    │   ├── ContextLengthExceeded     400 code=context_length_exceeded
    │   ├── UnsupportedParameter      400 code=unsupported_parameter
    │   ├── PromptInjectionDetected   400 code=prompt_injection_detected
    │   └── PiiDetected               400 code=pii_detected
    ├── Unauthorized                  401 code=invalid_api_key  (missing, unknown, revoked)
    ├── PermissionDenied              403 code=permission_denied / model_not_allowed
    ├── NotFound                      404 not_found_error
    │   └── ModelNotFound             404 code=model_not_found
    ├── MethodNotAllowed              405 (+ Allow)
    ├── RequestTimeout                408 code=request_timeout  (headers or body too slow)
    ├── Conflict                      409 code=conflict  (a name already taken)
    ├── PayloadTooLarge               413
    ├── UnsupportedMediaType          415
    ├── QueueFull                     429 code=queue_full   (+ Retry-After)
    ├── RateLimited                   429 code=rate_limit_exceeded (+ Retry-After)
    ├── HeadersTooLarge               431 code=headers_too_large
    ├── ClientClosedRequest           499 code=client_closed_request  (nobody is listening)
    ├── UpstreamError                 502 upstream_error
    ├── ModelUnavailable              503 service_unavailable (+ Retry-After)
    │   ├── WorkerCrashed             503 code=worker_crashed
    │   ├── BreakerOpen               503 code=circuit_open  (failing fast; + Retry-After)
    │   └── UpstreamUnhealthy         503 code=upstream_unhealthy  (failed health checks)
    ├── ConcurrencyLimited            503 code=upstream_overloaded  (adaptive limit full)
    ├── TooManyConnections            503 code=too_many_connections
    ├── StoreUnavailable              503 code=store_unavailable  (database or Redis unreachable)
    ├── DeadlineExceeded              504 code=timeout  (the request's own deadline)
    └── FirstTokenTimeout             504 code=upstream_timeout  (one attempt stalled)

Errors the HTTP connection layer raises itself (408, 431, 503 at the connection cap) are
written by ``api/http_protocol.py`` from the same classes, since no route runs for them.
"""

from __future__ import annotations

__all__ = [
    "BreakerOpen",
    "BudgetExceeded",
    "ClientClosedRequest",
    "ConcurrencyLimited",
    "ConfigError",
    "Conflict",
    "ContextLengthExceeded",
    "DeadlineExceeded",
    "FirstTokenTimeout",
    "HeadersTooLarge",
    "InvalidRequest",
    "MethodNotAllowed",
    "ModelNotFound",
    "ModelUnavailable",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "PiiDetected",
    "PromptInjectionDetected",
    "QueueFull",
    "RateLimited",
    "RequestTimeout",
    "ShipwayError",
    "StoreUnavailable",
    "TooManyConnections",
    "Unauthorized",
    "UnsupportedMediaType",
    "UnsupportedParameter",
    "UpstreamError",
    "UpstreamUnhealthy",
    "WorkerCrashed",
]


class ConfigError(Exception):
    """The configuration is invalid; the message names each bad key and how to fix it."""


class ShipwayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    headers: dict[str, str] | None = None
    """Extra response headers (``Retry-After`` comes from ``retry_after``)."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(ShipwayError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class PromptInjectionDetected(InvalidRequest):
    code = "prompt_injection_detected"


class PiiDetected(InvalidRequest):
    code = "pii_detected"


class Unauthorized(ShipwayError):
    """No key, or one that is unknown, revoked or expired (never says which: no oracle)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ShipwayError):
    """A valid key asked for something it may not have: a model, an admin route, a scope."""

    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(ShipwayError):
    status = 404
    type = "not_found_error"


class ModelNotFound(NotFound):
    type = "invalid_request_error"
    code = "model_not_found"


class MethodNotAllowed(ShipwayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class RequestTimeout(ShipwayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class Conflict(ShipwayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(ShipwayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(ShipwayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class QueueFull(ShipwayError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class RateLimited(ShipwayError):
    """A key's or team's requests or tokens per minute are used up; ``type`` says which."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        retry_after: float | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """``retry_after`` None: waiting cannot help (the request alone exceeds the limit).
        ``headers``: the refusing limit's ``x-ratelimit-*``, as OpenAI sends them on a 429."""
        super().__init__(message, retry_after=retry_after)
        self.type = kind
        self.headers = headers


class BudgetExceeded(ShipwayError):
    """A spend budget's hard limit is reached for its window; ``retry_after``: the window's end."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class HeadersTooLarge(ShipwayError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class ClientClosedRequest(ShipwayError):
    """The client went away before its answer was ready (nginx's 499); never sent."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"


class UpstreamError(ShipwayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        code: str | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
        kind: str = "bad_answer",
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.status = status
        if error_type is not None:
            self.type = error_type
        # What went wrong, from a small fixed set (a metric label; retries decide on it):
        # unreachable, broken, rejected, rate_limited, auth_failed, server_error, too_large,
        # error_event, bad_answer.
        self.kind = kind


class ModelUnavailable(ShipwayError):
    status = 503
    type = "service_unavailable"
    code = "model_unavailable"


class WorkerCrashed(ModelUnavailable):
    code = "worker_crashed"


class BreakerOpen(ModelUnavailable):
    """The model's circuit breaker is open: failing fast without touching the backend;
    ``retry_after``: the time until its next probe."""

    code = "circuit_open"


class UpstreamUnhealthy(ModelUnavailable):
    """The upstream failed its background health checks and is out of rotation."""

    code = "upstream_unhealthy"


class TooManyConnections(ShipwayError):
    status = 503
    type = "service_unavailable"
    code = "too_many_connections"


class ConcurrencyLimited(ShipwayError):
    """The model's adaptive concurrency limit is full: its upstream has slowed down, so more
    requests are not piled onto it (shed, or served by a fallback)."""

    status = 503
    type = "service_unavailable"
    code = "upstream_overloaded"


class StoreUnavailable(ShipwayError):
    """The database or Redis cannot be reached; the message names which and how to check."""

    status = 503
    type = "service_unavailable"
    code = "store_unavailable"


class DeadlineExceeded(ShipwayError):
    status = 504
    type = "timeout"
    code = "timeout"


class FirstTokenTimeout(ShipwayError):
    """One attempt produced no output within ``timeouts.first_token_s``: unlike the request's
    own deadline, this is the backend stalling, so it is retried or failed over."""

    status = 504
    type = "timeout"
    code = "upstream_timeout"

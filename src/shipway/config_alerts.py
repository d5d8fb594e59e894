"""Typed settings for alerts: the rule kinds, the webhooks, the engine's own settings.

Kept apart from ``config.py`` (which imports them into ``ShipwaySettings`` and re-exports
them), with the same rules: unknown keys rejected, every field described.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import TypeAliasType

__all__ = [
    "ALERT_KINDS",
    "AlertRule",
    "AlertSettings",
    "AlertSeverity",
    "CostAnomalyRule",
    "CostRateRule",
    "ErrorRateRule",
    "LatencyRule",
    "ModelUnavailableRule",
    "QueueSaturationRule",
    "WebhookSettings",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


AlertSeverity = Literal["info", "warning", "critical"]
_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


def _env_var_name(value: str | None) -> str | None:
    if value is not None and (not value or not value.replace("_", "").isalnum()):
        raise ValueError("must be the NAME of an environment variable (letters, digits, _)")
    return value


class _AlertRuleBase(_Strict):
    name: str = Field(
        pattern=_NAME_PATTERN,
        description="Unique name: the `rule` of a notification and the Prometheus `alertname`; "
        "a rule named like a default rule replaces it.",
    )
    severity: AlertSeverity = Field("warning", description="`info`, `warning` or `critical`.")
    for_s: float = Field(
        60.0,
        ge=0,
        description="The condition must hold this long (pending) before the alert fires.",
    )
    models: list[str] | None = Field(
        None, description="Only these model aliases; unset: every model, each on its own."
    )


class LatencyRule(_AlertRuleBase):
    """Fires when a latency quantile (received to last byte) is over an SLA."""

    kind: Literal["latency"] = Field(description="Rule kind.")
    quantile: float = Field(0.95, gt=0, lt=1, description="0.95 for p95, 0.99 for p99.")
    threshold_s: float = Field(gt=0, description="The SLA: fires above this many seconds.")
    window_s: float = Field(300.0, gt=0, description="The quantile is over this many seconds.")
    min_requests: int = Field(
        20, ge=1, description="Fewer calls than this in the window never fire."
    )


class ErrorRateRule(_AlertRuleBase):
    """Fires when a model's share of failed calls (status >= 400 but 499) spikes."""

    kind: Literal["error_rate"] = Field(description="Rule kind.")
    threshold: float = Field(
        0.05, gt=0, le=1, description="Fires above max(this, `baseline_factor` x baseline)."
    )
    baseline_factor: float = Field(
        3.0,
        ge=0,
        description="Multiple of the error rate over `baseline_window_s` before the window "
        "that counts as a spike; 0 compares with `threshold` alone.",
    )
    baseline_window_s: float = Field(3600.0, gt=0, description="The baseline's span.")
    ceiling: float = Field(
        0.5, gt=0, le=1, description="An error rate above this fires whatever the baseline."
    )
    window_s: float = Field(300.0, gt=0, description="The rate is over this many seconds.")
    min_requests: int = Field(
        20, ge=1, description="Fewer calls than this in the window never fire."
    )

    @model_validator(mode="after")
    def _ceiling_above_threshold(self) -> ErrorRateRule:
        if self.ceiling < self.threshold:
            raise ValueError("`ceiling` must be at least `threshold`")
        return self


class ModelUnavailableRule(_AlertRuleBase):
    """Fires when a model has not been ready (no worker loaded) for `for_s`."""

    kind: Literal["model_unavailable"] = Field(description="Rule kind.")
    severity: AlertSeverity = Field("critical", description="`info`, `warning` or `critical`.")


class QueueSaturationRule(_AlertRuleBase):
    """Fires when a model's queue is nearly full (one more waiting gets 429)."""

    kind: Literal["queue_saturation"] = Field(description="Rule kind.")
    threshold: float = Field(
        0.9, gt=0, le=1, description="Share of the model's `queue.max_waiting` that fires."
    )


class CostRateRule(_AlertRuleBase):
    """Fires when spend per hour (at `models.<alias>.price`) is over a threshold."""

    kind: Literal["cost_rate"] = Field(description="Rule kind.")
    threshold_per_hour: float = Field(
        gt=0, description="Fires above this spend per hour, in `telemetry.currency`."
    )
    window_s: float = Field(3600.0, gt=0, description="The rate is over this many seconds.")
    per_model: bool = Field(False, description="One alert per model; otherwise the models' total.")
    for_s: float = Field(0.0, ge=0, description="The condition must hold this long to fire.")


class CostAnomalyRule(_AlertRuleBase):
    """Fires when a (team, model)'s spend rate jumps above its own rolling baseline."""

    kind: Literal["cost_anomaly"] = Field(description="Rule kind.")
    window_s: float = Field(
        300.0, ge=60, multiple_of=60, description="The recent spend rate is over this long."
    )
    baseline_window_s: float = Field(
        86400.0,
        ge=3600,
        le=7 * 86400,
        multiple_of=60,
        description="The baseline: the mean spend rate over this span before the window.",
    )
    min_baseline_s: float = Field(
        3600.0,
        ge=60,
        description="Less history than this before the window (after a start) judges nothing.",
    )
    factor: float = Field(3.0, gt=1, description="Fires above this multiple of the baseline.")
    min_spend_per_hour: float = Field(
        1.0,
        ge=0,
        description="Never fires below this spend per hour (in `telemetry.currency`), so a "
        "tiny baseline does not fire on cents.",
    )
    teams: list[str] | None = Field(
        None, description="Only these teams; unset: every team (and keys with none), each apart."
    )

    @model_validator(mode="after")
    def _baseline_known(self) -> CostAnomalyRule:
        if self.min_baseline_s > self.baseline_window_s:
            raise ValueError("`min_baseline_s` must be at most `baseline_window_s`")
        return self


ALERT_KINDS = (
    "latency",
    "error_rate",
    "model_unavailable",
    "queue_saturation",
    "cost_rate",
    "cost_anomaly",
)
# A named alias, so the configuration reference shows `list[AlertRule]`.
AlertRule = TypeAliasType(
    "AlertRule",
    Annotated[
        LatencyRule
        | ErrorRateRule
        | ModelUnavailableRule
        | QueueSaturationRule
        | CostRateRule
        | CostAnomalyRule,
        Field(discriminator="kind"),
    ],
)


class WebhookSettings(_Strict):
    """Where firing and resolved notifications are POSTed."""

    name: str = Field(
        pattern=_NAME_PATTERN, description="Named in logs instead of the URL (never logged)."
    )
    format: Literal["json", "slack"] = Field(
        "json", description="`json`: Shipway's own JSON; `slack`: a Slack incoming webhook."
    )
    url: str | None = Field(
        None,
        description="The receiver's URL, for one whose URL is no secret (a relay on a "
        "private network). A URL with a token in it goes in `url_env`.",
    )
    url_env: str | None = Field(
        None, description="Environment variable holding the URL (required for `slack`)."
    )
    headers_env: str | None = Field(
        None,
        description="Environment variable holding headers to send (`name=value,name=value`, "
        "e.g. an auth token).",
    )
    min_severity: AlertSeverity = Field(
        "info", description="Alerts less severe than this are not sent here."
    )
    timeout_s: float = Field(5.0, gt=0, le=60, description="Per attempt.")
    retries: int = Field(
        3, ge=0, le=10, description="Attempts after the first (backoff 0.5 s doubling)."
    )

    _env_names = field_validator("url_env", "headers_env")(_env_var_name)

    @field_validator("url")
    @classmethod
    def _plain_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if parts.password or parts.query:
            raise ValueError("looks like it holds a secret: put the URL in `url_env` instead")
        return value

    @model_validator(mode="after")
    def _one_url(self) -> WebhookSettings:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("set exactly one of `url` and `url_env`")
        if self.format == "slack" and self.url is not None:
            raise ValueError(
                "a Slack webhook URL is a secret: set `url_env` to the NAME of the "
                "environment variable that holds it, not `url`"
            )
        return self


class AlertSettings(_Strict):
    """Alert rules evaluated in the process, notified to webhooks."""

    enabled: bool = Field(True, description="Evaluate the alert rules.")
    evaluation_interval_s: float = Field(
        10.0, gt=0, le=3600, description="Rules are evaluated this often."
    )
    default_rules: bool = Field(
        True,
        description="Evaluate the default rules (latency p95/p99, error rate, model "
        "unavailable, queue saturation, cost anomaly; docs/observability.md) beside `rules`.",
    )
    rules: list[AlertRule] = Field(
        default_factory=list,
        description="Rules, each with a `kind`: `latency`, `error_rate`, `model_unavailable`, "
        "`queue_saturation`, `cost_rate` or `cost_anomaly`.",
    )
    webhooks: list[WebhookSettings] = Field(
        default_factory=list, description="Receivers of firing and resolved notifications."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> AlertSettings:
        for items, what in ((self.rules, "rule"), (self.webhooks, "webhook")):
            names = [item.name for item in items]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"{what} names must be unique: {', '.join(repeated)}")
        return self

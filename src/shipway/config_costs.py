"""Typed settings for the cost features: the response cache, budgets, routes, batch jobs.

Kept apart from ``config.py`` (which imports them into ``ShipwaySettings``) so each settings
module stays readable; the same rules hold: every model rejects unknown keys, and every
field has a description, which ``docs/configuration.md`` is generated from.
"""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "BatchSettings",
    "BudgetRule",
    "BudgetSettings",
    "CacheOverrides",
    "CacheSettings",
    "ExactCacheMode",
    "RouteSettings",
]

_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"

ExactCacheMode = Literal["deterministic", "always", "off"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CacheSettings(_Strict):
    """The response cache, for every model (each may override under `models.<alias>.cache`).

    Always scoped by team (one tenant never reads another's answers) and by the model's
    version (its settings); kept in memory, or in Redis when `redis_url` is set."""

    exact: ExactCacheMode = Field(
        "deterministic",
        description="`deterministic`: cache requests whose answer is repeatable (temperature "
        "0, or a fixed `seed` on a local model); `always`: every chat request (opt in per "
        "model: a sampled answer is then served again); `off`.",
    )
    ttl_s: float = Field(3600.0, gt=0, description="An entry is served for this many seconds.")
    stale_s: float = Field(
        3600.0,
        ge=0,
        description="An entry is kept this long after its TTL, and served (marked "
        "`x-shipway-degraded: true`, `x-shipway-cache: stale`) only when the model and every "
        "fallback failed; 0: never.",
    )
    max_entries: int = Field(
        10_000, ge=1, description="Entries kept per model; the least recently used go first."
    )
    max_entry_bytes: int = Field(
        1_000_000, ge=1024, description="A larger answer is not cached (its JSON size)."
    )
    semantic: bool = Field(
        False,
        description="Also serve the answer to a request that differs from a cached one only "
        "in its last user message, when the two messages' embeddings are close enough "
        "(cosine >= `semantic_threshold`); under the same conditions as `exact`.",
    )
    semantic_threshold: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Cosine similarity a semantic hit needs between the last user messages "
        "(all else in the request must be equal). With all-MiniLM-L6-v2, paraphrases measured "
        '0.84-0.97 and questions with another meaning up to 0.89 ("What is 2+2?" / "What '
        'is 2+3?"); word-order swaps ("10 miles to km" / "10 km to miles": 0.99) are '
        "not told apart.",
    )
    embedding_model: str = Field(
        "all-minilm-l6-v2",
        description="The embedding model (an alias under `models`) that embeds questions "
        "(last user messages) for the semantic cache.",
    )


class CacheOverrides(_Strict):
    """Per-model overrides of `cache`; unset fields keep the top-level value."""

    exact: ExactCacheMode | None = Field(None, description="See `cache.exact`.")
    ttl_s: float | None = Field(None, gt=0, description="See `cache.ttl_s`.")
    stale_s: float | None = Field(None, ge=0, description="See `cache.stale_s`.")
    max_entries: int | None = Field(None, ge=1, description="See `cache.max_entries`.")
    semantic: bool | None = Field(None, description="See `cache.semantic`.")
    semantic_threshold: float | None = Field(
        None, gt=0, le=1, description="See `cache.semantic_threshold`."
    )


class BudgetRule(_Strict):
    """A spending cap over a calendar window, for keys, teams or tags."""

    name: str = Field(pattern=_NAME_PATTERN, description="Unique name, shown in errors and alerts.")
    scope: Literal["key", "team", "tag"] = Field(
        description="What the budget counts: each API key, each team, or each request tag."
    )
    match: list[str] | None = Field(
        None,
        description="Key names, team names or tags this rule applies to; unset: every one, "
        "each with its own budget.",
    )
    window: Literal["day", "month"] = Field(
        description="The calendar window, in `budgets.timezone`; spend starts from zero at "
        "its start."
    )
    soft_limit: float | None = Field(
        None, gt=0, description="Spend that raises an alert (once per window), in currency."
    )
    hard_limit: float | None = Field(
        None, gt=0, description="Spend that is never exceeded, in `telemetry.currency`."
    )
    on_exceeded: Literal["reject", "fallback"] = Field(
        "reject",
        description="At the hard limit: `reject` with 429 `budget_exceeded`, or `fallback` "
        "to `fallback_model`.",
    )
    fallback_model: str | None = Field(
        None, description="The (cheaper) model that serves once the hard limit is reached."
    )
    models: list[str] | None = Field(
        None, description="Only calls to these models count and are capped; unset: all."
    )

    @model_validator(mode="after")
    def _consistent(self) -> BudgetRule:
        if self.soft_limit is None and self.hard_limit is None:
            raise ValueError("set `soft_limit`, `hard_limit` or both")
        if (
            self.soft_limit is not None
            and self.hard_limit is not None
            and self.soft_limit > self.hard_limit
        ):
            raise ValueError("`soft_limit` must not be above `hard_limit`")
        if self.on_exceeded == "fallback" and not self.fallback_model:
            raise ValueError("`on_exceeded: fallback` needs `fallback_model`")
        return self


class BudgetSettings(_Strict):
    """Spend budgets over calendar windows (see docs/costs.md)."""

    timezone: str = Field(
        "UTC", description="IANA time zone of the day and month windows, e.g. `Europe/Paris`."
    )
    rules: list[BudgetRule] = Field(default_factory=list, description="The budgets.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as UTC)") from None
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> BudgetSettings:
        names = [rule.name for rule in self.rules]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"budget rule names must be unique: {', '.join(repeated)}")
        return self


class RouteSettings(_Strict):
    """A named route (a model name clients may ask for) served by the cheapest fitting model."""

    models: list[str] = Field(
        min_length=1, description="Candidate model aliases; the cheapest that fits serves."
    )
    max_latency_p95_s: float | None = Field(
        None,
        gt=0,
        description="Skip a candidate whose p95 latency over `latency_window_s` (live, from "
        "the in-memory history) is above this.",
    )
    latency_window_s: float = Field(
        300.0, gt=0, description="The span the live latency is measured over."
    )


class BatchSettings(_Strict):
    """OpenAI's Files and Batches API: JSONL jobs run at the lowest priority."""

    enabled: bool = Field(True, description="Serve `/v1/files` and `/v1/batches`.")
    max_file_bytes: int = Field(
        200 * 1024 * 1024, ge=1024, description="Largest file a client may upload."
    )
    max_lines: int = Field(50_000, ge=1, description="Most requests in one batch input file.")
    concurrency: int = Field(
        2, ge=1, le=256, description="Batch lines in flight at once, across all batches."
    )

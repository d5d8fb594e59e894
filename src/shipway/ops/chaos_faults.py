"""What the chaos proxy does to each request: the rates, the draw and the counts.

Each request gets at most one fault, from a single uniform draw over bands laid end to end
(reset, error, stall, cut, then "pass"), so a rate is the share of *all* requests that get
that fault and the rates cannot add up past 1. Latency is not a fault: it is added to every
request before anything else happens.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["FAULTS", "ChaosRates", "ChaosStats", "Fault", "FaultPicker", "explain"]

Fault = Literal["reset", "error", "stall", "cut"]
FAULTS: tuple[Fault, ...] = ("reset", "error", "stall", "cut")


class ChaosRates(BaseModel):
    """The proxy's knobs; ``POST /_chaos/config`` takes any subset of these fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(0.0, ge=0, le=1, description="Share answered error_status.")
    error_status: int = Field(500, ge=400, le=599, description="The status of an error fault.")
    latency_ms: float = Field(0.0, ge=0, description="Added to every request.")
    latency_jitter_ms: float = Field(0.0, ge=0, description="Plus uniform 0..this.")
    stall_rate: float = Field(0.0, ge=0, le=1, description="Share held silent, then forwarded.")
    stall_s: float = Field(10.0, ge=0, description="How long a stall is silent.")
    reset_rate: float = Field(0.0, ge=0, le=1, description="Share answered with a TCP RST.")
    cut_rate: float = Field(0.0, ge=0, le=1, description="Share whose body is cut short.")

    @model_validator(mode="after")
    def _one_fault_each(self) -> ChaosRates:
        total = self.error_rate + self.stall_rate + self.reset_rate + self.cut_rate
        if total > 1 + 1e-9:
            raise ValueError(
                f"the fault rates add up to {total:g}; each request gets at most one fault, "
                "so error_rate + stall_rate + reset_rate + cut_rate must be at most 1"
            )
        return self

    def rate(self, fault: Fault) -> float:
        return float(getattr(self, f"{fault}_rate"))


def explain(exc: ValidationError) -> str:
    """Pydantic's message without the noise: one ``field: problem`` per error."""
    parts = []
    for error in exc.errors():
        where = ".".join(map(str, error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


class FaultPicker:
    """Draws each request's fault; with a seed, the n-th request always gets the same one."""

    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)

    def pick(self, rates: ChaosRates) -> Fault | None:
        draw = self._rng.random()
        for fault in FAULTS:
            draw -= rates.rate(fault)
            if draw < 0:
                return fault
        return None

    def delay_s(self, rates: ChaosRates) -> float:
        jitter = self._rng.uniform(0, rates.latency_jitter_ms) if rates.latency_jitter_ms else 0
        return (rates.latency_ms + jitter) / 1000


@dataclass
class ChaosStats:
    """Counts since start: ``requests`` = ``passed`` + the faults; ``upstream_errors`` are
    requests (passed, stalled or cut) the target could not answer, sent back as 502."""

    requests: int = 0
    passed: int = 0
    reset: int = 0
    error: int = 0
    stall: int = 0
    cut: int = 0
    upstream_errors: int = 0

    def count(self, fault: Fault | None) -> None:
        self.requests += 1
        name = fault or "passed"
        setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return " ".join(f"{key}={value}" for key, value in asdict(self).items())

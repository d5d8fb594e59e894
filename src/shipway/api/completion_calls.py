"""The pipeline calls of one ``/v1/completions`` request, one per prompt, and their sums.

Each prompt's call is counted in the metrics on its own, but the request has one access-log
line, one audit record and one span, and those read one ``Call``: ``summarise`` fills it
from the prompts' calls. ``UsageTotal`` sums the answers' ``usage``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shipway.api.completion_shape import PromptShaper
from shipway.backends.base import ChatRequest
from shipway.errors import ShipwayError
from shipway.pipeline import Call

__all__ = ["PromptCall", "UsageTotal", "summarise"]


@dataclass(slots=True)
class PromptCall:
    """One prompt of the request: its pipeline call, its request and how its answer reads."""

    call: Call
    chat: ChatRequest
    shaper: PromptShaper
    param: str
    """How errors about its text name it: ``prompt``, or ``prompt[i]`` in a list."""

    def name_in(self, error: ShipwayError) -> ShipwayError:
        """``error``, naming this prompt if it is about the text, not the message that carried
        it (the guards and the input limits read the prompt as ``messages[0].content``)."""
        if error.param in ("prompt", "messages[0].content"):
            if error.param != "prompt":
                error.message = error.message.replace(error.param, self.param)
            error.param = self.param
        return error


_CLIENT_CLOSED = 499
_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


class UsageTotal:
    """The sum of the ``usage`` objects of the answers to a request's prompts."""

    def __init__(self) -> None:
        self.seen = False
        self._totals = dict.fromkeys(_COUNTS, 0)

    def add(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        self.seen = True
        for name in _COUNTS:
            self._totals[name] += int(usage.get(name) or 0)

    def body(
        self, model: str, cost: Callable[[str, dict[str, Any]], dict[str, Any]] | None
    ) -> dict[str, Any]:
        """The ``usage`` object to send, with ``cost`` when the client asked for it."""
        usage: dict[str, Any] = dict(self._totals)
        if cost is not None:
            usage["cost"] = cost(model, usage)
        return usage


def summarise(summary: Call, calls: list[Call]) -> None:
    """``summary`` (the request's registered call) gets the sums of ``calls``.

    Its outcome is the first failure that is not a cancel (a failed prompt cancels the
    others, which then read as 499); times span from the first admission to the last finish.
    Nothing to do for a single prompt, whose call is the summary itself.
    """
    if len(calls) == 1 and calls[0] is summary:
        return
    summary.prompt_tokens = sum(c.prompt_tokens for c in calls)
    summary.completion_tokens = sum(c.completion_tokens for c in calls)
    summary.cost = sum(c.cost for c in calls)
    failed = [c for c in calls if c.status != 200]
    worst = next((c for c in failed if c.status != _CLIENT_CLOSED), None)
    worst = worst or (failed[0] if failed else None)
    if worst is not None:
        summary.status, summary.error_code = worst.status, worst.error_code
    summary.received_at = min(c.received_at for c in calls)
    summary.admitted_at = _first(c.admitted_at for c in calls)
    summary.first_chunk_at = _first(c.first_chunk_at for c in calls)
    finished = [c.finished_at for c in calls if c.finished_at is not None]
    summary.finished_at = max(finished) if finished else None
    confidences = [c.confidence for c in calls if c.confidence is not None]
    summary.confidence = sum(confidences) / len(confidences) if confidences else None
    for call in calls:
        summary.log_fields.update(call.log_fields)
        summary.response_headers.update(call.response_headers)
    contents = [c.audit_content for c in calls if c.audit_content is not None]
    summary.audit_content = {"prompts": contents} if contents else None


def _first(times: Any) -> float | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None

"""The prompt-injection guard: named rules, then a classifier, then a threshold.

    guard = InjectionGuard.load()                 # the shipped model and threshold
    verdict = guard.scan(["first message", "second message"])
    verdict.flagged, verdict.score, verdict.reason, verdict.index

Each text is normalised once (``text_features.normalise``). A hit of one of the hand-written
rules (``injection_rules``) scores 1.0 and flags the text by itself; otherwise the score is the
classifier's (``injection_model``), flagged at or above the threshold chosen when it was
trained. ``scan`` scores a request's texts and reports the highest. It is synchronous, offline
and cheap (NumPy and ``re``: under a millisecond for a chat prompt, a few at most whatever the
body, as the characters read are capped; see docs/security.md), so the pipeline calls it
inline; it never touches the network.

What the pipeline does with a verdict is the ``GuardPolicy``: ``block`` refuses the request
(400 ``prompt_injection_detected``), ``flag`` serves it and marks it (header
``x-shipway-guard`` and the access log), ``off`` does not scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from shipway.security.injection_model import InjectionModel
from shipway.security.injection_rules import RULES, Rule, first_hit
from shipway.security.text_features import normalise

__all__ = [
    "MAX_SCAN_CHARS",
    "MAX_TOTAL_CHARS",
    "RULE_SCORE",
    "GuardPolicy",
    "GuardVerdict",
    "InjectionGuard",
]

RULE_SCORE = 1.0
# A longer text is read on its first and last half of this (the classifier reads less still:
# NgramHasher.max_chars); the cost stays bounded, whatever the body.
MAX_SCAN_CHARS = 16_384
# A request's texts are scanned newest first until this many characters have been read.
MAX_TOTAL_CHARS = 32_768


class GuardPolicy(StrEnum):
    BLOCK = "block"
    FLAG = "flag"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """The verdict on a request's texts, from the highest-scoring one.

    ``reason`` is ``rule:<name>`` (a rule fired), ``classifier`` (the score reached the
    threshold) or ``none``; ``index`` is the position of the highest-scoring text (None when
    there were no texts).
    """

    flagged: bool
    score: float
    reason: str
    index: int | None = None


class InjectionGuard:
    def __init__(
        self,
        model: InjectionModel,
        *,
        threshold: float | None = None,
        rules: tuple[Rule, ...] = RULES,
        max_scan_chars: int = MAX_SCAN_CHARS,
        max_total_chars: int = MAX_TOTAL_CHARS,
    ) -> None:
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.model = model
        self.threshold = model.threshold if threshold is None else threshold
        self.rules = rules
        self.max_scan_chars = max_scan_chars
        self.max_total_chars = max_total_chars

    @classmethod
    def load(cls, path: Path | None = None, *, threshold: float | None = None) -> InjectionGuard:
        """The shipped model (or the one at ``path``), at its own threshold unless given."""
        return cls(InjectionModel.load(path), threshold=threshold)

    def score(self, text: str) -> tuple[float, str | None]:
        """The text's score and the name of the rule that fired, if one did."""
        if len(text) > self.max_scan_chars:
            half = self.max_scan_chars // 2
            text = f"{text[:half]}\n{text[-half:]}"
        normalised = normalise(text)
        rule = first_hit(normalised, self.rules)
        if rule is not None:
            return RULE_SCORE, rule
        return self.model.score(normalised), None

    def scan(self, texts: Sequence[str]) -> GuardVerdict:
        """The verdict on the highest-scoring text, reading the newest (last) texts first and
        stopping once ``max_total_chars`` have been read (a bounded cost per request)."""
        best_score, best_rule, best_index = 0.0, None, None
        budget = self.max_total_chars
        for index in range(len(texts) - 1, -1, -1):
            if budget <= 0:
                break
            budget -= min(len(texts[index]), self.max_scan_chars)
            score, rule = self.score(texts[index])
            if best_index is None or score > best_score:
                best_score, best_rule, best_index = score, rule, index
            if rule is not None:
                break  # nothing scores higher than a rule hit
        flagged = best_index is not None and best_score >= self.threshold
        if best_rule is not None:
            reason = f"rule:{best_rule}"
        else:
            reason = "classifier" if flagged else "none"
        return GuardVerdict(flagged, best_score, reason, best_index)

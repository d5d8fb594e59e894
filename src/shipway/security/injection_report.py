"""The guard's numbers on a labelled corpus: flag rate per source with Wilson 95 % intervals.

    python -m shipway.security.injection_report --corpus ../shared/corpora/injection-dev.jsonl
    python -m shipway.security.injection_report --corpus … --held-out   # minutes: 196 fits

The first scores the shipped guard (model + rules, shipped threshold) on the corpus: TPR per
attack source, FPR per benign source, harmful-topic (``benign_risky``) sources apart. That
model was trained on this very corpus, so it is the dev-set check, not an estimate.
``--held-out`` is the estimate: each source is scored by a model trained without it (its
threshold chosen the same way, without it), a stand-in for sources the guard has never seen.
Only counts and ids are printed, never texts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.stats import binomtest

from shipway.security.injection import InjectionGuard
from shipway.security.injection_corpus import Example, Kind, load_corpus
from shipway.security.train_injection import (
    Dataset,
    choose_threshold,
    fit,
    held_out_scores,
    scores,
)

__all__ = ["SourceRate", "flags_held_out", "flags_shipped", "main", "markdown", "rates"]

BoolArray = npt.NDArray[np.bool_]
_POOLED = {Kind.ATTACK: "all attacks", Kind.BENIGN: "all non-risky benign"}


@dataclass(frozen=True, slots=True)
class SourceRate:
    source: str
    kind: Kind
    n: int
    flagged: int
    by_rules: int  # of the flagged, those a rule flagged (whatever the classifier said)

    @property
    def rate(self) -> float:
        return self.flagged / self.n

    def wilson(self) -> tuple[float, float]:
        interval = binomtest(self.flagged, self.n).proportion_ci(0.95, method="wilson")
        return float(interval.low), float(interval.high)


def rates(examples: Sequence[Example], flagged: BoolArray, by_rules: BoolArray) -> list[SourceRate]:
    """One row per source (attacks, then benign, then benign_risky), then pooled rows."""
    order = {Kind.ATTACK: 0, Kind.BENIGN: 1, Kind.BENIGN_RISKY: 2}
    keys = sorted({(ex.kind, ex.source) for ex in examples}, key=lambda k: (order[k[0]], k[1]))
    groups = [(source, kind, [ex.source == source for ex in examples]) for kind, source in keys]
    groups += [(name, kind, [ex.kind is kind for ex in examples]) for kind, name in _POOLED.items()]
    rows = []
    for name, kind, member in groups:
        hits, rules = flagged[member], (flagged & by_rules)[member]
        rows.append(SourceRate(name, kind, len(hits), int(hits.sum()), int(rules.sum())))
    return rows


def markdown(rows: Sequence[SourceRate]) -> str:
    lines = [
        "| source | kind | n | flagged | by rules | rate | Wilson 95 % |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    pooled = set(_POOLED.values())
    for row in rows:
        low, high = row.wilson()
        measure = "TPR" if row.kind is Kind.ATTACK else "FPR"
        name = f"**{row.source}**" if row.source in pooled else f"`{row.source}`"
        lines.append(
            f"| {name} | {row.kind.value} | {row.n} | {row.flagged} | {row.by_rules} | "
            f"{measure} {row.rate:.1%} | [{low:.1%}, {high:.1%}] |"
        )
    return "\n".join(lines)


def flags_shipped(
    examples: Sequence[Example], guard: InjectionGuard
) -> tuple[BoolArray, BoolArray]:
    """Which texts the guard flags, and which of them a rule flagged."""
    verdicts = [guard.scan([ex.text]) for ex in examples]
    flagged = np.array([v.flagged for v in verdicts], dtype=bool)
    return flagged, np.array([v.reason.startswith("rule:") for v in verdicts], dtype=bool)


def flags_held_out(data: Dataset) -> BoolArray:
    """Each source flagged by a model trained without it, at a threshold chosen (the way
    ``train_injection`` chooses it: leave one source out) without it: 14 x 14 fits."""
    flagged = np.zeros(len(data.examples), dtype=bool)
    sources, benign = data.sources(), data.kinds(Kind.BENIGN)
    for source in sorted(set(sources)):
        held = sources == source
        inner = held_out_scores(data, within=~held)
        threshold = choose_threshold(inner[benign & ~held])
        model = fit(data, np.flatnonzero(~held))
        flagged[held] = scores(data, model, np.flatnonzero(held)) >= threshold
    return flagged


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shipway.security.injection_report")
    parser.add_argument("--corpus", type=Path, required=True, help="injection-dev.jsonl")
    parser.add_argument("--held-out", action="store_true", help="leave-one-source-out estimate")
    args = parser.parse_args(argv)
    examples = load_corpus(args.corpus)
    if args.held_out:
        print("Held out by source (each source scored by a model trained without it):\n")
        data = Dataset.build(examples)
        print(markdown(rates(examples, flags_held_out(data), data.rule_hits)))
    else:
        guard = InjectionGuard.load()
        print(f"Shipped guard, threshold {guard.threshold}:\n")
        print(markdown(rates(examples, *flags_shipped(examples, guard))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

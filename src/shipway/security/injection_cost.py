"""What the injection guard costs per request, measured on this machine: prints a table.

    python -m shipway.security.injection_cost [--corpus ../shared/corpora/injection-dev.jsonl]

Times ``InjectionGuard.scan([text])`` (one thread, in-process, as the pipeline calls it) on
made-up benign prompts of growing length, then, with ``--corpus``, on every corpus text
(their lengths are those of real prompts and attacks). Prints medians and 99th percentiles;
it asserts nothing (speed is measured, never asserted in tests).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shipway.security.injection import InjectionGuard
from shipway.security.injection_corpus import load_corpus

__all__ = ["main", "time_scan"]

_SENTENCE = (
    "Our quarterly report shows revenue grew 4% while support tickets fell; please summarise "
    "the main drivers, list three risks for next quarter and draft a short e-mail to the team. "
)
_LENGTHS = (100, 500, 2_000, 8_000, 16_000, 100_000, 4_000_000)
# The worst case for the rules: every rule's trigger words, and no rule matching, so every
# regular expression runs over the whole text.
_TRIGGERS = (
    "ignore it; instructions, system prompt. developer mode? jail restrictions openai admin "
    "![x] <script onload select drop /etc/ whoami = the quick brown fox "
)


def time_scan(guard: InjectionGuard, text: str | list[str], repeats: int) -> list[float]:
    """Milliseconds per ``scan`` call, one per repeat (after one warm-up call)."""
    texts = [text] if isinstance(text, str) else text
    guard.scan(texts)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        guard.scan(texts)
        times.append((time.perf_counter() - start) * 1000)
    return times


def _row(label: str, times: Sequence[float]) -> str:
    p50, p99 = np.percentile(times, [50, 99])
    return f"| {label} | {len(times)} | {p50:.3f} | {p99:.3f} | {max(times):.3f} |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shipway.security.injection_cost")
    parser.add_argument("--corpus", type=Path, help="also time every text of this corpus")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    guard = InjectionGuard.load()
    loaded_ms = (time.perf_counter() - start) * 1000
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"loading the guard: {loaded_ms:.1f} ms\n")
    print("| prompt | calls | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|")
    for length in _LENGTHS:
        text = (_SENTENCE * (length // len(_SENTENCE) + 1))[:length]
        repeats = 300 if length <= 16_000 else 30
        print(_row(f"{length:,} characters", time_scan(guard, text, repeats)))
    worst = (_TRIGGERS * (16_384 // len(_TRIGGERS) + 1))[:16_384]
    print(_row("16,384 characters of rule trigger words (worst case)", time_scan(guard, worst, 30)))
    print(_row("200 texts like that in one request", time_scan(guard, [worst] * 200, 30)))
    if args.corpus:
        examples = load_corpus(args.corpus)
        per_text = [min(time_scan(guard, ex.text, 3)) for ex in examples]
        lengths = [len(ex.text) for ex in examples]
        label = f"each corpus text (median {int(np.median(lengths)):,} characters)"
        print(_row(label, per_text))
    return 0


if __name__ == "__main__":
    sys.exit(main())

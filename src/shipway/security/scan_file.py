"""``shipway guard scan``: score every ``{"text": …}`` line of a JSON Lines file.

Each line is written back with every key it had plus ``flagged`` (bool) and ``score`` (float,
6 decimals); a line that already has those keys gets them replaced. Blank lines are skipped.
A line that is not a JSON object with a string ``text`` is reported on stderr by number and
left out of the output; the exit code is then 1. An input that cannot be read at all (missing,
a directory, no permission) is exit code 2, with nothing written.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from shipway.security.injection import InjectionGuard

__all__ = ["ScanSummary", "scan_file", "scan_lines"]

EXIT_BAD_LINES = 1
EXIT_UNREADABLE = 2


@dataclass(slots=True)
class ScanSummary:
    written: int = 0
    flagged: int = 0
    bad: list[str] = field(default_factory=list)


def scan_lines(lines: Iterable[bytes], guard: InjectionGuard, out: BinaryIO) -> ScanSummary:
    summary = ScanSummary()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            summary.bad.append(f"line {number}: not valid JSON in UTF-8 ({exc})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            summary.bad.append(f'line {number}: expected a JSON object with a string "text"')
            continue
        verdict = guard.scan([row["text"]])
        row["flagged"] = verdict.flagged
        row["score"] = round(verdict.score, 6)
        out.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
        summary.written += 1
        summary.flagged += verdict.flagged
    return summary


def scan_file(path: Path, output: Path | None = None, threshold: float | None = None) -> int:
    """Scan ``path`` (``-`` for stdin) to ``output`` (stdout if None); the exit code."""
    if output is not None and output.exists() and path.exists() and output.samefile(path):
        print(f"--output {output} is the input file: write elsewhere", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        source = sys.stdin.buffer if str(path) == "-" else path.open("rb")
    except OSError as exc:
        print(f"cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    guard = InjectionGuard.load(threshold=threshold)
    with source:
        try:
            sink = sys.stdout.buffer if output is None else output.open("wb")
        except OSError as exc:
            print(f"cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_UNREADABLE
        try:
            summary = scan_lines(source, guard, sink)
        except OSError as exc:  # e.g. a directory opens on some systems but cannot be read
            print(f"cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_UNREADABLE
        finally:
            sink.flush()
            if output is not None:
                sink.close()
    for problem in summary.bad:
        print(f"{path}: {problem}", file=sys.stderr)
    where = "stdout" if output is None else str(output)
    print(
        f"{summary.written} lines scanned to {where}, {summary.flagged} flagged"
        + (f", {len(summary.bad)} bad lines skipped" if summary.bad else ""),
        file=sys.stderr,
    )
    return EXIT_BAD_LINES if summary.bad else 0

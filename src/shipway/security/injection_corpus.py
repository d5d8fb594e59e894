"""The labelled prompt-injection corpus (``injection-dev.jsonl``) as typed examples.

Each line is ``{"id", "text", "label", "source"}``: label 1 for an attack, 0 for benign.
Sources starting with ``benign_risky/`` are harmful-topic questions that are not attacks:
they are trained on as benign but reported apart, and the threshold is chosen on the other
benign sources only. The texts are attack content: report counts and ids, never the texts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

__all__ = ["Example", "Kind", "corpus_sha256", "load_corpus"]

_RISKY_PREFIX = "benign_risky/"


class Kind(StrEnum):
    ATTACK = "attack"
    BENIGN = "benign"
    BENIGN_RISKY = "benign_risky"


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    text: str = field(repr=False)  # attack content: kept out of reprs, tracebacks and logs
    label: int = 0
    source: str = ""

    @property
    def kind(self) -> Kind:
        if self.label == 1:
            return Kind.ATTACK
        return Kind.BENIGN_RISKY if self.source.startswith(_RISKY_PREFIX) else Kind.BENIGN


def load_corpus(path: Path) -> list[Example]:
    """Every line of the file; a malformed line is a ``ValueError`` naming its number."""
    examples: list[Example] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                example = Example(
                    str(row["id"]), str(row["text"]), int(row["label"]), str(row["source"])
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not an injection example: {exc}") from exc
            if example.label not in (0, 1):
                raise ValueError(f"{path}:{number}: label must be 0 or 1")
            examples.append(example)
    return examples


def corpus_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

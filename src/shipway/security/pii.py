"""The PII guard: find personal data in a prompt, swap it for placeholders, put it back.

    guard = PiiGuard()                                  # once, at start-up
    r = guard.redact("Mail bob@example.com today")      # r.text: "Mail <EMAIL_ADDRESS_1> today"
    restore("Sent to <EMAIL_ADDRESS_1>.", r.mapping)    # "Sent to bob@example.com."

Detection is Presidio's pattern and checksum recognizers, built offline in
``pii_recognizers.py``; PERSON and LOCATION are added only when a spaCy NER model is
installed. Policies (chosen per model or key by the pipeline):

- ``redact``: the prompt reaches the model with placeholders; the answer (plain, or streamed
  through a ``StreamRestorer``) gets the original values back;
- ``block``: a prompt with PII is refused (400 ``pii_detected``; ``describe`` writes the
  message, which never carries the values);
- ``off``: nothing is done.

``redact_for_log`` is for every policy: logs never carry raw PII. It masks what Presidio
finds and, as a safety net, anything shaped like an address, a long number, an IP address or
an IBAN, so it errs towards masking too much.

Placeholders are ``<TYPE_N>``, numbered per type in order of first appearance, and stable per
distinct value within one request: pass the mapping of earlier messages to ``redact`` and the
same value gets the same placeholder again, so the model can refer to it consistently.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from shipway.security.pii_recognizers import NER_TYPES, PATTERN_TYPES, PresidioDetector, Span

__all__ = [
    "NER_TYPES",
    "PATTERN_TYPES",
    "PiiGuard",
    "PiiPolicy",
    "Redaction",
    "Span",
    "StreamRestorer",
    "describe",
    "restore",
]

PiiPolicy = Literal["redact", "block", "off"]

_PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]*)_([1-9][0-9]*)>")

# The logs' safety net: shapes that may hold PII, masked even when no recognizer fired.
# Every alternative starts at a bounded set of places and never rescans: linear time.
_LOG_SWEEP = re.compile(
    r"(?<![^\s<>])[^\s@<>]*@[^\s@<>]*\w"  # a word with an @ in it
    r"|\b[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]){10,32}"  # IBAN-like
    r"|(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:\.[0-9]{1,3}){0,3}(?![\w:])"
    r"|\+?\(?[0-9](?:[ \t().\-/]{0,3}[0-9])*"  # digit runs, kept if long enough
)
_LOG_MIN_DIGITS = 7
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


@dataclass(frozen=True, slots=True)
class Redaction:
    """A text with its PII replaced, and how to put it back.

    ``mapping`` is placeholder → original value. It is the request's secret: keep it in
    memory for the request's lifetime only, never log or store it. ``spans`` are where the
    values were in the original text (types and offsets, for counts; never the values).
    """

    text: str
    mapping: dict[str, str]
    spans: tuple[Span, ...] = ()


class PiiGuard:
    """Finds and redacts PII. Build one at start-up and share it: it keeps no per-call state.

    Every method is synchronous CPU work, linear in the text: about a millisecond for a chat
    prompt, ten for 20 kB of prose, more for text dense with numbers (see docs/security.md).
    Run long texts in a worker thread so they do not hold up the event loop.
    """

    def __init__(
        self,
        *,
        entities: Iterable[str] | None = None,
        ner_model: str | None = "auto",
        score_threshold: float = 0.4,
    ) -> None:
        """``ner_model``: ``"auto"`` uses an installed spaCy English model if there is one,
        ``None`` never does, a name or path loads that model (it must be installed: nothing
        is downloaded). ``entities`` narrows the types; by default every type detectable.
        """
        self._detector = PresidioDetector(ner_model=ner_model, score_threshold=score_threshold)
        self.entities: tuple[str, ...] = self._detector.entities
        if entities is not None:
            wanted = tuple(entities)
            unknown = sorted(set(wanted) - set(self.entities))
            if unknown:
                raise ValueError(
                    f"PII types {unknown} cannot be detected here; choose from "
                    f"{list(self.entities)} (PERSON and LOCATION need an installed spaCy model)"
                )
            self.entities = wanted

    @property
    def ner_model(self) -> str | None:
        """The spaCy model in use for PERSON/LOCATION, or None (pattern types only)."""
        return self._detector.ner_model

    def find(self, text: str) -> list[Span]:
        """Non-overlapping PII spans, in text order."""
        return self._detector.find(text, self.entities)

    def redact(self, text: str, mapping: Mapping[str, str] | None = None) -> Redaction:
        """Replace each PII value by its placeholder.

        ``mapping``: the mapping returned for earlier texts of the same request (its other
        messages); it is extended, not changed, so one value keeps one placeholder.
        """
        out = dict(mapping or {})
        by_value: dict[tuple[str, str], str] = {}
        last: dict[str, int] = {}  # the highest number given to each type so far
        for given, value in out.items():
            kind, number = _parse(given)
            by_value[(kind, value)] = given
            last[kind] = max(last.get(kind, 0), number)
        spans = self.find(text)
        pieces: list[str] = []
        pos = 0
        for span in spans:
            value = text[span.start : span.end]
            placeholder = by_value.get((span.type, value))
            if placeholder is None:
                placeholder = _next_placeholder(span.type, last, text)
                by_value[(span.type, value)] = placeholder
                out[placeholder] = value
            pieces += (text[pos : span.start], placeholder)
            pos = span.end
        pieces.append(text[pos:])
        return Redaction("".join(pieces), out, tuple(spans))

    def redact_for_log(self, text: str) -> str:
        """``text`` with every PII value (and anything shaped like one) masked as ``<TYPE>``."""
        regions = [(s.start, s.end, s.type) for s in self.find(text)]
        for m in _LOG_SWEEP.finditer(text):
            found = m.group(0)
            if (
                "@" in found
                or _ipv6_like(found)
                or _digits(found) >= _LOG_MIN_DIGITS
                or _DOTTED_QUAD.fullmatch(found)
            ):
                regions.append((m.start(), m.end(), "PII"))
        regions.sort()
        pieces: list[str] = []
        pos = 0
        for start, end, kind in _merge(regions):
            pieces += (text[pos:start], f"<{kind}>")
            pos = end
        pieces.append(text[pos:])
        return "".join(pieces)

    @staticmethod
    def restore(text: str, mapping: Mapping[str, str]) -> str:
        """Same as the module's ``restore``."""
        return restore(text, mapping)


def restore(text: str, mapping: Mapping[str, str]) -> str:
    """Put the original values back for every placeholder of ``mapping`` found in ``text``.

    Placeholders the mapping does not hold (a model inventing ``<PERSON_7>``) stay as they are.
    """
    if not mapping:
        return text
    return _PLACEHOLDER.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)


class StreamRestorer:
    """``restore`` for a streamed answer, one chunk at a time.

    A placeholder may arrive split across chunks (``<EMAIL_AD`` + ``DRESS_1>``): a chunk's
    tail that could still grow into a known placeholder is held back until the next chunk
    settles it, so each output piece is final. Call ``flush`` at the end of the stream. Keep
    one per choice (and per tool-call argument string) of a stream.
    """

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._mapping = dict(mapping)
        self._prefixes = {ph[:i] for ph in self._mapping for i in range(1, len(ph))}
        self._held = ""

    def feed(self, chunk: str) -> str:
        text = self._held + chunk
        self._held = ""
        cut = text.rfind("<")
        if cut != -1 and text[cut:] in self._prefixes:
            text, self._held = text[:cut], text[cut:]
        return restore(text, self._mapping)

    def flush(self) -> str:
        """What is still held back (a partial placeholder that never completed)."""
        held, self._held = self._held, ""
        return held


def describe(spans: Iterable[Span]) -> str:
    """The message for a prompt refused under the ``block`` policy: types and counts only."""
    counts = Counter(span.type for span in spans)
    found = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    return (
        f"the request contains personal data ({found}) and this model's PII policy is "
        "`block`; remove the values, or use a model or key whose PII policy is `redact`"
    )


def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def _ipv6_like(text: str) -> bool:
    """``2001:db8::1``, ``fe80::1``: not ``12:30:00`` (two colons, no ``::``)."""
    return ("::" in text or text.count(":") >= 3) and any(c not in ":." for c in text)


def _next_placeholder(kind: str, last: dict[str, int], text: str) -> str:
    """The next ``<kind_N>``; skips any the text already holds, so none is ambiguous."""
    number = last.get(kind, 0) + 1
    while f"<{kind}_{number}>" in text:
        number += 1
    last[kind] = number
    return f"<{kind}_{number}>"


def _parse(placeholder: str) -> tuple[str, int]:
    m = _PLACEHOLDER.fullmatch(placeholder)
    if m is None:
        raise ValueError(f"{placeholder!r} is not a PII placeholder like <EMAIL_ADDRESS_1>")
    return m.group(1), int(m.group(2))


def _merge(regions: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Sorted, possibly overlapping regions merged; a recognizer's type wins over ``PII``."""
    merged: list[tuple[int, int, str]] = []
    for start, end, kind in regions:
        if merged and start < merged[-1][1]:
            last_start, last_end, last_kind = merged[-1]
            merged[-1] = (last_start, max(end, last_end), last_kind if kind == "PII" else kind)
        else:
            merged.append((start, end, kind))
    return merged

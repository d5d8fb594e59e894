"""Presidio's analyzer, built to run offline and in linear time.

Out of the box Presidio's ``AnalyzerEngine`` loads ``en_core_web_lg`` (and downloads it
when it is missing), its e-mail recognizer asks tldextract, which fetches the public-suffix
list over the network on first use, and its context enhancer walks every token of the text
for every match (a 20 kB prompt took 100 s). None of that may happen in Shipway, so this
module builds the analyzer by hand:

- no spaCy model: Presidio's ``NoOpNlpEngine`` (no tokens, nothing loaded); with one that
  is installed, Presidio's spaCy engine whose ``load`` never downloads, and the spaCy NER
  recognizer for PERSON and LOCATION;
- context words are looked for among the five words before a match (Presidio's rule,
  +0.35, with a floor of 0.45), in time proportional to the number of matches;
- e-mail domains are checked against tldextract's bundled public-suffix snapshot;
- the registry holds exactly the recognizers below, tuned on the dev corpus (see
  docs/security.md): Mastercard's 2-series numbers, phone numbers of the regions the
  corpus holds at "possible" leniency, without the dates and short numbers that lets in.
"""

from __future__ import annotations

import bisect
import importlib.util
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@contextmanager
def _unimportable(*names: str) -> Iterator[None]:
    """``import name`` fails inside the block, for the modules not imported yet."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name) is None:
                del sys.modules[name]


# spaCy (through thinc) imports torch, and Presidio imports transformers, whenever they are
# installed, and they are (the embedding workers use them): in the gateway process that
# costs 4.9 s of start-up and 890 MB of memory for code these recognizers never run. Both
# stay out while Presidio loads; spaCy models that need torch (en_core_web_trf) cannot run.
with _unimportable("torch", "transformers"):
    import phonenumbers
    import spacy
    import tldextract
    from presidio_analyzer import (
        AnalyzerEngine,
        EntityRecognizer,
        Pattern,
        RecognizerRegistry,
        RecognizerResult,
    )
    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
    from presidio_analyzer.nlp_engine import (
        NlpArtifacts,
        NlpEngine,
        NoOpNlpEngine,
        SpacyNlpEngine,
    )
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        SpacyRecognizer,
        UsSsnRecognizer,
    )

__all__ = ["NER_TYPES", "PATTERN_TYPES", "PresidioDetector", "Span", "installed_ner_model"]

PATTERN_TYPES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN_CODE",
    "IP_ADDRESS",
)
NER_TYPES = ("PERSON", "LOCATION")

# Tried in this order by ner_model="auto"; only ever loaded if already installed.
_SPACY_MODELS = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm")
_PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES")
_PHONE_CONTEXT = ["phone", "telephone", "tel", "cell", "mobile", "call", "number", "fax"]
_PHONE_MIN_DIGITS = 8
# A longer run of digits and separators is a table, a list or a vector: the matcher reads
# it slowly (20 kB of IP addresses, one run: 2 s) and finds "numbers" in it that are not.
_PHONE_RUN_MAX = 48
_DATE = re.compile(
    r"[0-9]{4}([-/.])[0-9]{1,2}\1[0-9]{1,2}\b|[0-9]{1,2}([-/.])[0-9]{1,2}\2[0-9]{4}\b"
)
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")  # an IPv4 address
# Presidio's card pattern predates Mastercard's 2-series (2221-2720, issued since 2017).
_MASTERCARD_2 = Pattern(
    "Mastercard 2-series (weak)",
    r"\b2(?:22[1-9]|2[3-9][0-9]|[3-6][0-9]{2}|7[01][0-9]|720)"
    r"[- ]?[0-9]{4}[- ]?[0-9]{4}[- ]?[0-9]{4}\b",
    0.3,
)
_WORD = re.compile(r"\w+")
_CHUNK = 4096
_MARGIN = 128
_LOCAL = r"\w!#$%&'*+/=?^`{|}~.\-"  # the characters of an e-mail's local part
_EMAIL = Pattern(
    "Email (bounded local part)",
    rf"(?<![{_LOCAL}])[{_LOCAL}]{{1,64}}@\w+(?:-+\w+)*(?:\.\w+(?:-+\w+)*)+\b",
    0.5,
)
# Where a phone number can be: digits with short runs of separators between them.
_DIGIT_RUN = re.compile(r"\+?\(?[0-9](?:[ \t().\-/]{0,3}[0-9])*\)?")


@dataclass(frozen=True, slots=True)
class Span:
    """Where one PII value sits in a text: ``text[start:end]``, of ``type``."""

    type: str
    start: int
    end: int


def installed_ner_model() -> str | None:
    """The first English spaCy model installed in this environment, if any."""
    for name in _SPACY_MODELS:
        if importlib.util.find_spec(name) is not None:
            return name
    return None


class PresidioDetector:
    """Presidio's ``AnalyzerEngine`` over the recognizers of ``PATTERN_TYPES`` (+ NER)."""

    def __init__(self, *, ner_model: str | None, score_threshold: float) -> None:
        model = installed_ner_model() if ner_model == "auto" else ner_model
        if model is not None and not (spacy.util.is_package(model) or Path(model).exists()):
            raise ValueError(
                f"spaCy model {model!r} is not installed, and Shipway never downloads one; "
                "install its package, or set no NER model for pattern types only"
            )
        self.ner_model = model
        engine: NlpEngine
        if model is None:
            engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
        else:
            engine = _InstalledSpacyEngine(model)
        engine.load()
        recognizers: list[EntityRecognizer] = [
            _OfflineEmailRecognizer(),
            _PhoneRecognizer(
                context=_PHONE_CONTEXT,
                supported_regions=_PHONE_REGIONS,
                leniency=phonenumbers.Leniency.POSSIBLE,
            ),
            CreditCardRecognizer(patterns=[*CreditCardRecognizer.PATTERNS, _MASTERCARD_2]),
            UsSsnRecognizer(),
            IbanRecognizer(),
            IpRecognizer(),
        ]
        self.entities: tuple[str, ...] = PATTERN_TYPES
        if model is not None:
            recognizers.append(SpacyRecognizer(supported_entities=list(NER_TYPES)))
            self.entities += NER_TYPES
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
        self._analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=engine,
            supported_languages=["en"],
            default_score_threshold=score_threshold,
            context_aware_enhancer=_PrefixContextEnhancer(),
        )

    def find(self, text: str, entities: tuple[str, ...]) -> list[Span]:
        """Non-overlapping spans in text order: where two overlap, the surer (then longer)."""
        results = []
        for start in range(0, len(text), _CHUNK):
            results += self._analyze_chunk(text, start, list(entities))
        results.sort(key=lambda r: (-r.score, r.start - r.end, r.start))
        starts: list[int] = []
        kept: list[Span] = []  # sorted by start, never overlapping
        for r in results:
            i = bisect.bisect_left(starts, r.start)
            if (i > 0 and kept[i - 1].end > r.start) or (i < len(kept) and kept[i].start < r.end):
                continue
            starts.insert(i, r.start)
            kept.insert(i, Span(r.entity_type, r.start, r.end))
        return kept

    def _analyze_chunk(self, text: str, start: int, entities: list[str]) -> list[RecognizerResult]:
        """The values that start in ``text[start : start + _CHUNK]``.

        A text is analysed a chunk at a time so that an NER model's work and memory stay
        bounded (spaCy refuses texts over a million characters); without one, chunks cost
        about 10% more than one pass. Each chunk is read with a margin either side, for the
        context words before a value and for a value that runs past the chunk's end (up to
        _MARGIN characters long).
        """
        lead = max(0, start - _MARGIN)
        piece = text[lead : start + _CHUNK + _MARGIN]
        kept = []
        for r in self._analyzer.analyze(piece, language="en", entities=entities):
            r.start += lead
            r.end += lead
            if start <= r.start < start + _CHUNK:
                kept.append(r)
        return kept


class _PrefixContextEnhancer(ContextAwareEnhancer):
    """Presidio's context rule, reading the raw text before each match.

    A recognizer's context word inside one of the five words before a match raises its score
    by 0.35 (substring match, so "phones" counts for "phone"). It matters for the weak
    patterns only: "SSN 536224711" is a US_SSN at 0.45, above the same digits read as a phone
    number at 0.4 (Presidio's floor is 0.4, a tie); the others pass the threshold alone.
    """

    def __init__(self) -> None:
        super().__init__(
            context_similarity_factor=0.35,
            min_score_with_context_similarity=0.45,
            context_prefix_count=5,
            context_suffix_count=0,
        )

    def enhance_using_context(
        self,
        text: str,
        raw_results: list[RecognizerResult],
        nlp_artifacts: NlpArtifacts,
        recognizers: list[EntityRecognizer],
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        by_id = {recognizer.id: recognizer for recognizer in recognizers}
        extra = [word.lower() for word in context or ()]
        for result in raw_results:
            metadata = result.recognition_metadata or {}
            recognizer = by_id.get(metadata.get(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY))
            if recognizer is None or not recognizer.context:
                continue
            if metadata.get(RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY):
                continue
            window = text[max(0, result.start - 100) : result.start].lower()
            words = _WORD.findall(window)[-self.context_prefix_count :] + extra
            if any(cue.lower() in word for cue in recognizer.context for word in words):
                boosted = max(
                    result.score + self.context_similarity_factor,
                    self.min_score_with_context_similarity,
                )
                result.score = min(boosted, self.MAX_SCORE)
        return raw_results


class _InstalledSpacyEngine(SpacyNlpEngine):
    """Presidio's spaCy engine for a model that is installed; it never downloads one."""

    def __init__(self, model: str) -> None:
        super().__init__(models=[{"lang_code": "en", "model_name": model}])

    def load(self) -> None:
        # Presidio declares ``nlp`` as None until loaded.
        self.nlp = {"en": spacy.load(self.models[0]["model_name"])}  # type: ignore[assignment]


class _PhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer at "possible" leniency, minus dates and short numbers.

    "Possible" accepts numbers whose range is unassigned (made-up, new or test numbers that
    "valid" rejects) but, for some regions, also two- to five-digit runs (years, prices,
    house numbers, postcodes), dates and IPv4 addresses. No personal number has fewer than
    eight digits.
    """

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        # libphonenumber's matcher scans the whole text once per region, in Python: run it
        # on each run of 8+ digits only, up to 48 characters long (with two characters either
        # side, which it reads to reject numbers glued to words). 20 kB of prose: 0.7 ms
        # instead of 20; 20 kB of IP addresses or card numbers: milliseconds instead of 4 s.
        results: list[RecognizerResult] = []
        for run in _DIGIT_RUN.finditer(text):
            if _digits(run.group(0)) < _PHONE_MIN_DIGITS or len(run.group(0)) > _PHONE_RUN_MAX:
                continue
            offset = max(0, run.start() - 2)
            window = text[offset : run.end() + 2]
            found = super().analyze(window, entities, nlp_artifacts)  # type: ignore[arg-type]
            for r in found:
                if _phone_shaped(window[r.start : r.end]):
                    r.start += offset
                    r.end += offset
                    results.append(r)
        return results


def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def _phone_shaped(candidate: str) -> bool:
    return (
        _digits(candidate) >= _PHONE_MIN_DIGITS
        and _DATE.match(candidate) is None
        and _DOTTED_QUAD.fullmatch(candidate) is None
    )


class _OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer with a linear-time pattern and an offline domain check.

    Presidio's own pattern backtracks quadratically on a long run of local-part characters
    that ends without a domain (10 kB of ``x.x.x.``, then ``@``: 13 s). This one starts
    only where a local part starts and allows it 64 characters, the RFC 5321 limit.
    """

    def __init__(self) -> None:
        super().__init__(patterns=[_EMAIL])
        self._tld = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        if "@" not in text:  # most prompts: skip the scan
            return []
        results: list[RecognizerResult] = super().analyze(
            text, entities, nlp_artifacts, regex_flags
        )
        return results

    def validate_result(self, pattern_text: str) -> bool:
        return bool(self._tld(pattern_text).fqdn)

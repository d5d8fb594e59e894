"""Hand-written signs of prompt injection, each one a named regular expression.

They run on ``text_features.normalise``'d text (casefolded, one space between words) and are
written from the published shapes of attacks, not fitted to a corpus: they are what the
guard knows about attacks it has never seen. Each must be precise on its own: a hit flags
the text whatever the classifier says, so a rule that fires on ordinary requests ("ignore the
first column", "developer mode on my Android phone", "the system prompt parameter") does not
belong here. They scan the whole text, however long, since an injection hidden in the middle
of a long document is exactly what the classifier (which reads a bounded head and tail, and
dilutes a short line in a long text) may miss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RULES", "Rule", "first_hit"]

_PRIOR = r"(?:previous|prior|above|preceding|earlier|former|original|initial|foregoing)"
_ORDERS = r"(?:instructions?|prompts?|rules|directives?|guidelines|commands|programming)"
_LIMITS = r"(?:restrictions|filters|ethics|morals|censorship)"


@dataclass(frozen=True, slots=True)
class Rule:
    """``pattern`` runs only if the text holds one of ``triggers`` (literals any match of
    the pattern contains): ``in`` is a fast substring search, a regex is a step per
    character, so most texts pay for the triggers only. Patterns do not start with ``\\b``:
    that would stop ``re`` from skipping ahead to the possible first characters."""

    name: str
    triggers: tuple[str, ...]
    pattern: re.Pattern[str]

    def matches(self, normalised: str) -> bool:
        return any(t in normalised for t in self.triggers) and bool(self.pattern.search(normalised))


def _rule(name: str, triggers: tuple[str, ...], pattern: str) -> Rule:
    return Rule(name, triggers, re.compile(pattern))


RULES: tuple[Rule, ...] = (
    _rule(
        "override-instructions",
        ("ignore", "disregard", "forget", "override", "bypass", "discard"),
        rf"(?:ignore|disregard|forget|override|bypass|discard) (?:(?:all|any|every)(?: of)?"
        rf"(?: (?:the|your|these|those))?(?: {_PRIOR})?|(?:(?:the|these|those) )?{_PRIOR}"
        rf"|your(?: {_PRIOR})?) {_ORDERS}\b",
    ),
    _rule(
        "override-instructions-de-fr-es",
        ("ignor", "vergiss", "oubliez", "olvida"),
        r"(?:ignoriere|vergiss|ignorez|oubliez|ignora|olvida)\b.{0,40}"
        r"\b(?:anweisungen|instruktionen|regeln|instructions|consignes|instrucciones|reglas)\b",
    ),
    _rule(
        "new-instructions",
        ("instructions", "system prompt"),
        r"(?:new|updated|real|true) (?:instructions|system prompt) ?:",
    ),
    _rule("do-anything-now", ("do anything now", "dan mode"), r"do anything now\b|dan mode\b"),
    _rule(
        "developer-mode",
        ("developer mode",),
        r"developer mode (?:enabled|output)\b|developer mode\)",
    ),
    _rule("jailbreak-word", ("jail",), r"jail ?broken\b|jailbreak (?:mode|prompt|enabled)\b"),
    _rule(
        "unrestricted-persona",
        (
            "restrictions",
            "filters",
            "ethics",
            "morals",
            "censorship",
            "unfiltered",
            "uncensored",
            "unrestricted",
            "amoral",
            "unethical",
        ),
        rf"(?:no|without|free (?:of|from)|not bound by|break free of) (?:any )?"
        rf"(?:ethical |moral |content |safety )?{_LIMITS}\b.{{0,80}}"
        r"\b(?:you are|you're|you will|act as|pretend|roleplay|role-play|persona)\b"
        r"|(?:you are|you're|act as|pretend to be) (?:an? |now an? )?"
        r"(?:unfiltered|uncensored|unrestricted|amoral|unethical)\b",
    ),
    _rule(
        "content-policy",
        ("openai", "anthropic"),
        r"(?:ignore|bypass|break|not bound by|free from|n't (?:have to )?(?:follow|abide by"
        r"|adhere to|comply with)|no longer (?:follow|bound by))\b.{0,30}"
        r"\b(?:openai|anthropic)(?:'s)? (?:content |usage )?polic(?:y|ies)\b",
    ),
    _rule(
        "reveal-system-prompt",
        ("prompt", "instructions"),
        r"(?:reveal|print|show|repeat|output|leak|disclose|tell me)\b.{0,30}"
        r"\b(?:your (?:system|initial|original|hidden|secret)|the (?:initial|original|hidden"
        r"|secret)) (?:prompt|instructions)\b",
    ),
    _rule(
        "fake-authority-marker",
        ("admin", "system", "developer", "instruction", "inst]", "im_start"),
        r"\[(?:admin|system|developer) ?(?:request|override|message|note)\b"
        r"|</?(?:instruction|system|admin)>|<\|im_start\|>|\[/?inst\]"
        r"|(?:^|\. |: )(?:system|admin) ?(?:override|instruction|message) ?:",
    ),
    _rule(
        "markdown-image-exfiltration",
        ("![",),
        r"!\[[^\]]{0,200}\]\( ?https?://[^)\s]{1,300}[?&][^)\s=]+=",
    ),
    _rule(
        "script-injection",
        ("<script", "javascript:", "onerror", "onload"),
        r"<script\b[^>]{0,100}>[^<]{0,200}(?:alert|document\.cookie|eval|atob|fetch)"
        r"|javascript: ?(?:alert|eval|document|window|fetch|void|//|%)|on(?:error|load) ?= ?\S",
    ),
    _rule(
        "sql-injection",
        ("=", "select", "drop", "delete", "shutdown", "exec"),
        r"(?:['\")]|\d) ?(?:or|and) \(?['\"]?(\w+)['\"]? ?= ?['\"]?\1\b"
        r"|['\"]\)? ?; ?(?:drop|delete|shutdown|exec)\b|['\"] ?union (?:all )?select\b",
    ),
    _rule(
        "shell-injection",
        ("/etc/", "rm -rf", "nc -e", "whoami", "__import__"),
        r"(?:[;|&`]|\$\() ?(?:cat /etc/(?:passwd|shadow)|rm -rf /|nc -e|whoami\b)"
        r"|__import__\( ?['\"]os['\"] ?\)",
    ),
)


def first_hit(normalised: str, rules: tuple[Rule, ...] = RULES) -> str | None:
    """The name of the first rule the text matches, or None."""
    for rule in rules:
        if rule.matches(normalised):
            return rule.name
    return None

"""The guard stage: the prompt-injection and PII guards between a request and its model.

    guards = Guards(settings)
    await guards.start()                                  # in the lifespan
    g = await guards.check_chat(model, principal, chat)   # may raise the 400
    result = g.restore_result(await backend.chat(g.request))
    restorer = g.stream_restorer()                        # one per stream
    async for chunk in backend.stream(g.request):
        yield restorer.feed_chunk(chunk)                  # one chunk in, one chunk out

Policies are resolved per request: the key's own (``Principal.injection_policy`` /
``pii_policy``) wins over the model's (``models.<alias>.guards``), which wins over
``guards``. A key may loosen a model's policy as well as tighten it: key policies are set by
an admin. A key policy this version does not know is read as ``block`` (fail closed).

What is scanned:

- injection: the text of ``user``, ``tool`` and ``function`` messages. The system and
  developer prompts are the operator's and the assistant turns are the model's own; neither
  is the untrusted input an injection arrives through (and a system prompt full of "you must
  never…" would score high for nothing). Embeddings are not scanned: an embedding model
  follows no instructions, and a document is scanned when it comes back into a chat as a
  user or tool message; refusing to index texts *about* injections would only hurt search.
- PII: every role's text (content strings, text parts, assistant tool-call arguments), with
  one mapping per chat so one value keeps one placeholder across messages. Image and audio
  parts pass as they are.

The ``x-shipway-guard`` response header is an RFC 8941 structured-field dictionary, present
only when a guard did something the client should know about::

    x-shipway-guard: prompt_injection;score=0.93;reason=rule:override-instructions, pii_redacted=3

``prompt_injection`` (policy ``flag``, the prompt scored at or above the threshold; reason
``rule:<name>`` or ``classifier``) and ``pii_redacted=<values replaced>`` (policy
``redact``). The access log gets ``guard_*`` fields (verdicts, scores, counts per PII type;
never a value) through ``log_fields`` or, so that a refused request's line says why too,
through the ``log`` dict a caller passes.

Cost: both policies ``off`` (the default) is a dict lookup; no guard is ever built. The
injection scan runs inline (0.1-0.5 ms for a chat prompt). Presidio runs inline when its
cost, estimated from the texts, is under a millisecond (a chat prompt of prose), and in a
worker thread otherwise: the hop costs 0.1-0.5 ms, more than a short scan, but a long one
would hold up every other request on the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from shipway.backends.base import ChatRequest, EmbedRequest
from shipway.config import ShipwaySettings
from shipway.errors import PiiDetected, PromptInjectionDetected
from shipway.security.injection import GuardPolicy, GuardVerdict, InjectionGuard
from shipway.security.pii import PiiGuard, PiiPolicy, Span, StreamRestorer, describe, restore
from shipway.security.principal import Principal

__all__ = ["GUARD_HEADER", "ChatGuarding", "ChatStreamRestorer", "Guards"]

GUARD_HEADER = "x-shipway-guard"

# Presidio's measured cost without an NER model: ~100 µs per text, ~0.2 µs per character of
# prose, and ~100 µs per run of digits, where its time goes (phone numbers, cards, IBANs: 256
# characters listing phone numbers take 3 ms, 2 kB of prose 0.4 ms). Length alone cannot tell
# those apart; the digit runs can, for ~10 µs per 500 characters.
_INLINE_PII_BUDGET_US = 1000
_DIGIT_RUN = re.compile(r"[0-9]{2,}")
_UNTRUSTED_ROLES = frozenset({"user", "tool", "function"})
_INJECTION_POLICIES: dict[str, GuardPolicy] = {p.value: p for p in GuardPolicy}
_PII_POLICIES: dict[str, PiiPolicy] = {"redact": "redact", "block": "block", "off": "off"}
_NOTHING: Mapping[str, Any] = MappingProxyType({})

T = TypeVar("T")


class Guards:
    """The guards and their policies; built once at start-up, shared by every request."""

    def __init__(
        self,
        settings: ShipwaySettings,
        *,
        injection_guard: InjectionGuard | None = None,
        pii_guard: PiiGuard | None = None,
    ) -> None:
        """``injection_guard`` / ``pii_guard``: ready-made guards to use instead of building
        them (tests, or a caller that already has one)."""
        default = (GuardPolicy(settings.guards.injection), settings.guards.pii)
        self._default: tuple[GuardPolicy, PiiPolicy] = default
        self._by_model: dict[str, tuple[GuardPolicy, PiiPolicy]] = {
            alias: (
                default[0] if spec.guards.injection is None else GuardPolicy(spec.guards.injection),
                default[1] if spec.guards.pii is None else spec.guards.pii,
            )
            for alias, spec in settings.models.items()
        }
        threshold = settings.guards.injection_threshold
        self._injection = _Lazy(lambda: InjectionGuard.load(threshold=threshold), injection_guard)
        self._pii = _Lazy(PiiGuard, pii_guard)

    @property
    def injection_guard(self) -> InjectionGuard | None:
        """The injection guard if it has been built (None: no request has needed it yet)."""
        return self._injection.value

    @property
    def pii_guard(self) -> PiiGuard | None:
        """The PII guard if it has been built (None: no request has needed it yet)."""
        return self._pii.value

    async def start(self) -> None:
        """Build now the guards the configuration uses, so no request waits for them; those
        only a key's policy may need are built on the first such request."""
        configured = [self._default, *self._by_model.values()]
        if any(injection != GuardPolicy.OFF for injection, _ in configured):
            await self._injection.get()
        if any(pii != "off" for _, pii in configured):
            await self._pii.get()

    def policies(self, model: str, principal: Principal) -> tuple[GuardPolicy, PiiPolicy]:
        """(injection, PII) policy for this caller and model: key > model > ``guards``."""
        injection, pii = self._by_model.get(model, self._default)
        if principal.injection_policy is not None:
            injection = _INJECTION_POLICIES.get(principal.injection_policy, GuardPolicy.BLOCK)
        if principal.pii_policy is not None:
            pii = _PII_POLICIES.get(principal.pii_policy, "block")
        return injection, pii

    async def check_chat(
        self,
        model: str,
        principal: Principal,
        request: ChatRequest,
        *,
        log: MutableMapping[str, Any] | None = None,
    ) -> ChatGuarding:
        """Scan a chat request under its policies.

        Raises ``PromptInjectionDetected`` or ``PiiDetected`` (400) under ``block``; their
        messages name the message and the PII types and counts, never the text. Otherwise
        returns the request to send (redacted under PII ``redact``; the caller's request and
        its dicts are left as they were), the headers to add and how to restore the answer.
        ``log``, when given, receives the ``guard_*`` fields as they are known, so they are
        there even when a block raises.
        """
        injection, pii = self.policies(model, principal)
        if injection == GuardPolicy.OFF and pii == "off":
            return ChatGuarding(request)
        started = time.perf_counter()
        fields: dict[str, Any] = {}
        header: list[str] = []
        mapping: Mapping[str, str] = _NOTHING
        try:
            if injection != GuardPolicy.OFF:
                verdict = await self._scan_injection(injection, request, fields)
                if verdict is not None:
                    header.append(
                        f"prompt_injection;score={round(verdict.score, 3)};reason={verdict.reason}"
                    )
            if pii != "off":
                request, mapping, replaced = await self._guard_chat_pii(pii, request, fields)
                if replaced:
                    header.append(f"pii_redacted={replaced}")
        finally:
            fields["guard_ms"] = round((time.perf_counter() - started) * 1000, 3)
            if log is not None:
                log.update(fields)
        headers = {GUARD_HEADER: ", ".join(header)} if header else _NOTHING
        return ChatGuarding(request, headers, fields, mapping)

    async def check_embed(
        self,
        model: str,
        principal: Principal,
        request: EmbedRequest,
        *,
        log: MutableMapping[str, Any] | None = None,
    ) -> EmbedRequest:
        """Scan an embeddings request for PII (never for injection: see the module's doc).

        ``block`` raises ``PiiDetected``; ``redact`` returns a request whose inputs hold
        placeholders, so the vectors are those of the redacted texts. Each input gets its own
        numbering (``<EMAIL_ADDRESS_1>`` in each), so a text embeds the same way whatever it is
        batched with. ``body`` is left as sent: backends send ``inputs``.
        """
        _, pii = self.policies(model, principal)
        if pii == "off" or not request.inputs:
            return request
        started = time.perf_counter()
        fields: dict[str, Any] = {}
        try:
            guard = await self._pii.get()
            redactions = await _run(
                lambda: [guard.redact(text) for text in request.inputs],
                _inline(guard, request.inputs),
            )
            spans = [span for r in redactions for span in r.spans]
            _pii_fields(fields, pii, spans)
            if spans and pii == "block":
                first = next(i for i, r in enumerate(redactions) if r.spans)
                param = "input" if len(request.inputs) == 1 else f"input[{first}]"
                raise PiiDetected(describe(spans), param=param)
        finally:
            fields["guard_ms"] = round((time.perf_counter() - started) * 1000, 3)
            if log is not None:
                log.update(fields)
        if not spans:
            return request
        return dataclasses.replace(request, inputs=[r.text for r in redactions])

    # -- the two scans ------------------------------------------------------------------------
    async def _scan_injection(
        self, policy: GuardPolicy, request: ChatRequest, fields: dict[str, Any]
    ) -> GuardVerdict | None:
        """The verdict to announce (flag), or None; raises under block."""
        guard = await self._injection.get()
        params: list[str] = []
        texts: list[str] = []
        for i, message in enumerate(request.messages):
            if message.get("role") in _UNTRUSTED_ROLES:
                for param, text in _content_texts(message, i):
                    params.append(param)
                    texts.append(text)
        verdict = guard.scan(texts)
        fields["guard_injection_score"] = round(verdict.score, 3)
        fields["guard_injection_reason"] = verdict.reason
        if not verdict.flagged:
            fields["guard_injection"] = "passed"
            return None
        assert verdict.index is not None  # a flagged verdict always names its text
        if policy == GuardPolicy.BLOCK:
            fields["guard_injection"] = "blocked"
            raise PromptInjectionDetected(
                f"{params[verdict.index]} looks like a prompt injection ({verdict.reason}, "
                f"score {verdict.score:.2f}) and this model's injection policy is `block`; "
                "rephrase it, or use a model or key whose injection policy is `flag` or `off`",
                param=params[verdict.index],
            )
        fields["guard_injection"] = "flagged"
        return verdict

    async def _guard_chat_pii(
        self, policy: PiiPolicy, request: ChatRequest, fields: dict[str, Any]
    ) -> tuple[ChatRequest, Mapping[str, str], int]:
        """(request to send, placeholder → value, values replaced); raises under block."""
        guard = await self._pii.get()
        # The API layer makes them one list; a caller that did not gets both redacted.
        raw = request.body.get("messages")
        body_messages = raw if isinstance(raw, list) and raw is not request.messages else None
        # text → param of its first appearance: a text sent twice is scanned and counted once
        found: dict[str, str] = {}
        for messages in (request.messages, body_messages or ()):
            for i, message in enumerate(messages):
                for param, text in _pii_texts(message, i):
                    found.setdefault(text, param)

        def redact_all() -> tuple[dict[str, str], dict[str, str], list[Span], str | None]:
            mapping: dict[str, str] = {}
            swap: dict[str, str] = {}
            spans: list[Span] = []
            first: str | None = None
            for text, param in found.items():
                redaction = guard.redact(text, mapping)
                if redaction.spans:
                    mapping = redaction.mapping
                    swap[text] = redaction.text
                    spans += redaction.spans
                    first = first or param
            return mapping, swap, spans, first

        mapping, swap, spans, first = await _run(redact_all, _inline(guard, found))
        _pii_fields(fields, policy, spans)
        if not spans:
            return request, _NOTHING, 0
        if policy == "block":
            raise PiiDetected(describe(spans), param=first)
        messages = _rewrite(request.messages, swap)
        body = {**request.body}
        if "messages" in body:
            body["messages"] = messages if body_messages is None else _rewrite(body_messages, swap)
        # A text completion's prompt is its one message's text: it goes redacted alike.
        prompt = None if request.prompt is None else swap.get(request.prompt, request.prompt)
        redacted = dataclasses.replace(request, messages=messages, body=body, prompt=prompt)
        return redacted, MappingProxyType(mapping), len(spans)


@dataclass(frozen=True, slots=True)
class ChatGuarding:
    """What the guard stage decided for one chat request.

    ``request`` goes to the backend; ``headers`` go on the response (the stream's too);
    ``log_fields`` go in the access log. ``mapping`` (placeholder → value) is the request's
    secret: it lives as long as the request and is never logged, so it has no repr.
    """

    request: ChatRequest
    headers: Mapping[str, str] = field(default_factory=lambda: _NOTHING)
    log_fields: Mapping[str, Any] = field(default_factory=lambda: _NOTHING)
    mapping: Mapping[str, str] = field(default_factory=lambda: _NOTHING, repr=False)

    def restore_result(self, result: dict[str, Any]) -> dict[str, Any]:
        """A ``chat.completion`` body with the PII values back in each choice's content and
        tool-call arguments (a new dict; ``result`` itself is returned when nothing was
        redacted). Logprobs keep the placeholders: they are the tokens the model saw."""
        choices = result.get("choices")
        if not self.mapping or not isinstance(choices, list):
            return result
        return {**result, "choices": [self._restore_choice(c) for c in choices]}

    def stream_restorer(self) -> ChatStreamRestorer:
        """A restorer for one stream of this request (each stream needs its own)."""
        return ChatStreamRestorer(self.mapping)

    def _restore_choice(self, choice: Any) -> Any:
        if isinstance(choice, dict) and isinstance(choice.get("text"), str):
            # A text_completion choice (an upstream's /v1/completions answer).
            return {**choice, "text": restore(choice["text"], self.mapping)}
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            return choice
        message = {**message}
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = restore(content, self.mapping)
        elif isinstance(content, list):
            message["content"] = [_restore_part(part, self.mapping) for part in content]
        tool_calls = message.get("tool_calls")
        if isinstance(tool_calls, list):
            message["tool_calls"] = [
                _map_arguments(call, lambda text: restore(text, self.mapping))
                for call in tool_calls
            ]
        return {**choice, "message": message}


class ChatStreamRestorer:
    """``restore`` over a stream of ``chat.completion.chunk`` bodies, one chunk in, one out
    (or of ``text_completion`` chunks, whose choices carry ``text`` instead of a delta).

    A placeholder split across chunks is held back until it completes; what is still held
    when a choice finishes goes into the delta of the chunk carrying its ``finish_reason``,
    so the text always arrives before the finish. One restorer per choice index and per
    tool call within it. ``flush`` is for a stream that ended without finishing its choices.
    """

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._mapping = mapping
        self._content: dict[int, StreamRestorer] = {}
        self._arguments: dict[tuple[int, int], StreamRestorer] = {}
        self._text_completion = False

    def feed_chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """The chunk with the values restored (a new dict; ``chunk`` itself when there is
        nothing to restore)."""
        choices = chunk.get("choices")
        if not self._mapping or not choices or not isinstance(choices, list):
            return chunk
        return {**chunk, "choices": [self._feed_choice(choice) for choice in choices]}

    def flush(self) -> dict[str, Any] | None:
        """A last chunk with whatever is still held back, or None (the usual case: each
        choice's finish chunk has already carried it)."""
        held: dict[int, dict[str, Any]] = {}
        for index, restorer in self._content.items():
            text = restorer.flush()
            if text:
                held.setdefault(index, {})["content"] = text
        for (index, call), restorer in self._arguments.items():
            text = restorer.flush()
            if text:
                calls = held.setdefault(index, {}).setdefault("tool_calls", [])
                calls.append({"index": call, "function": {"arguments": text}})
        self._content.clear()
        self._arguments.clear()
        if not held:
            return None
        if self._text_completion:
            return {
                "object": "text_completion",
                "choices": [
                    {"index": i, "text": d["content"], "logprobs": None, "finish_reason": None}
                    for i, d in sorted(held.items())
                ],
            }
        return {
            "object": "chat.completion.chunk",
            "choices": [
                {"index": index, "delta": delta, "finish_reason": None}
                for index, delta in sorted(held.items())
            ],
        }

    def _feed_choice(self, choice: Any) -> Any:
        if not isinstance(choice, dict):
            return choice
        index = choice.get("index", 0)
        finished = choice.get("finish_reason") is not None
        if isinstance(choice.get("text"), str) and "delta" not in choice:
            return self._feed_text(choice, index, finished)
        delta = choice.get("delta")
        delta = {**delta} if isinstance(delta, dict) else {}
        content = delta.get("content")
        if isinstance(content, str) or (finished and index in self._content):
            restorer = self._content.get(index)
            if restorer is None:
                restorer = self._content[index] = StreamRestorer(self._mapping)
            text = restorer.feed(content) if isinstance(content, str) else ""
            if finished:
                text += restorer.flush()
                del self._content[index]
            if isinstance(content, str) or text:
                delta["content"] = text
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            delta["tool_calls"] = [self._feed_call(index, call) for call in tool_calls]
        if finished:
            self._flush_calls(index, delta)
        return {**choice, "delta": delta}

    def _feed_text(self, choice: dict[str, Any], index: int, finished: bool) -> dict[str, Any]:
        self._text_completion = True
        restorer = self._content.get(index)
        if restorer is None:
            restorer = self._content[index] = StreamRestorer(self._mapping)
        text = restorer.feed(choice["text"])
        if finished:
            text += restorer.flush()
            del self._content[index]
        return {**choice, "text": text}

    def _feed_call(self, index: int, call: Any) -> Any:
        if not isinstance(call, dict):
            return call
        key = (index, call.get("index", 0))
        restorer = self._arguments.get(key)
        if restorer is None:
            restorer = self._arguments[key] = StreamRestorer(self._mapping)
        return _map_arguments(call, restorer.feed)

    def _flush_calls(self, index: int, delta: dict[str, Any]) -> None:
        for key in [key for key in self._arguments if key[0] == index]:
            held = self._arguments.pop(key).flush()
            if not held:
                continue
            calls = delta.setdefault("tool_calls", [])
            for n, call in enumerate(calls):
                if isinstance(call, dict) and call.get("index", 0) == key[1]:
                    function = call.get("function")
                    function = {**function} if isinstance(function, dict) else {}
                    function["arguments"] = (_arguments(call) or "") + held
                    calls[n] = {**call, "function": function}
                    break
            else:
                calls.append({"index": key[1], "function": {"arguments": held}})


class _Lazy(Generic[T]):
    """A value built once, in a worker thread, by whichever request needs it first."""

    def __init__(self, build: Callable[[], T], value: T | None = None) -> None:
        self._build = build
        self.value = value
        self._task: asyncio.Future[T] | None = None

    async def get(self) -> T:
        if self.value is not None:
            return self.value
        if self._task is None:
            self._task = asyncio.ensure_future(asyncio.to_thread(self._build))
        task = self._task
        try:
            # Shielded: a client that leaves must not cancel a build others are waiting on.
            value = await asyncio.shield(task)
        except BaseException:
            if task.done() and (task.cancelled() or task.exception() is not None):
                self._task = None  # the build itself failed: the next request tries again
            raise
        self.value = value
        return value


async def _run(work: Callable[[], T], inline: bool) -> T:
    return work() if inline else await asyncio.to_thread(work)


def _inline(guard: PiiGuard, texts: Iterable[str]) -> bool:
    """Whether scanning ``texts`` should cost under ``_INLINE_PII_BUDGET_US``."""
    if guard.ner_model is not None:
        return False  # spaCy costs milliseconds per text whatever it holds
    budget = _INLINE_PII_BUDGET_US
    for text in texts:
        budget -= 100 + len(text) // 5
        if budget < 0:
            return False  # before reading a long text for digits
        budget -= 100 * len(_DIGIT_RUN.findall(text))
        if budget < 0:
            return False
    return True


def _pii_fields(fields: dict[str, Any], policy: PiiPolicy, spans: Sequence[Span]) -> None:
    if not spans:
        fields["guard_pii"] = "passed"
        return
    fields["guard_pii"] = "blocked" if policy == "block" else "redacted"
    fields["guard_pii_types"] = dict(sorted(Counter(span.type for span in spans).items()))


def _content_texts(message: Mapping[str, Any], i: int) -> Iterator[tuple[str, str]]:
    """(param, text) of each text in a message's content."""
    content = message.get("content")
    if isinstance(content, str):
        yield f"messages[{i}].content", content
    elif isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    yield f"messages[{i}].content[{j}].text", text


def _pii_texts(message: Any, i: int) -> Iterator[tuple[str, str]]:
    """(param, text) of each text a message carries: its content and tool-call arguments."""
    if not isinstance(message, dict):
        return
    yield from _content_texts(message, i)
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for k, call in enumerate(tool_calls):
            arguments = _arguments(call)
            if arguments is not None:
                yield f"messages[{i}].tool_calls[{k}].function.arguments", arguments


def _rewrite(messages: list[Any], swap: Mapping[str, str]) -> list[Any]:
    """``messages`` with each text found in ``swap`` replaced; copied where changed only, so
    the caller's dicts are never written to."""
    return [_rewrite_message(message, swap) for message in messages]


def _rewrite_message(message: Any, swap: Mapping[str, str]) -> Any:
    if not isinstance(message, dict):
        return message
    out = message
    content = message.get("content")
    if isinstance(content, str) and content in swap:
        out = {**message, "content": swap[content]}
    elif isinstance(content, list):
        parts = [_swap_part(part, swap) for part in content]
        if any(new is not old for new, old in zip(parts, content, strict=True)):
            out = {**message, "content": parts}
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        calls = [_map_arguments(call, lambda text: swap.get(text, text)) for call in tool_calls]
        if any(new is not old for new, old in zip(calls, tool_calls, strict=True)):
            out = {**out, "tool_calls": calls}
    return out


def _swap_part(part: Any, swap: Mapping[str, str]) -> Any:
    if isinstance(part, dict) and part.get("type") == "text":
        text = part.get("text")
        if isinstance(text, str) and text in swap:
            return {**part, "text": swap[text]}
    return part


def _restore_part(part: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return {**part, "text": restore(part["text"], mapping)}
    return part


def _arguments(call: Any) -> str | None:
    function = call.get("function") if isinstance(call, dict) else None
    arguments = function.get("arguments") if isinstance(function, dict) else None
    return arguments if isinstance(arguments, str) else None


def _map_arguments(call: Any, change: Callable[[str], str]) -> Any:
    """The tool call with ``change`` applied to its arguments (the same object if unchanged)."""
    arguments = _arguments(call)
    if arguments is None:
        return call
    new = change(arguments)
    if new == arguments:
        return call
    return {**call, "function": {**call["function"], "arguments": new}}

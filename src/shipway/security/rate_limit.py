"""Requests and tokens per minute, per key and per team, over the shared counters.

``RateLimiter.admit`` runs before a request is routed. It takes one request from the key's
rpm and the team's rpm, and the request's estimated tokens (prompt + answer reservation) from
the key's tpm and the team's tpm, all or none, in one counter call (``Counter.hit_many``: one
Redis round trip); only the limits that are set are asked, so a caller without limits costs
no call. When any is refused, the first refused in that order (key rpm, team rpm, key tpm,
team tpm) raises ``RateLimited`` (429, ``type`` ``requests`` or ``tokens``, ``Retry-After`` =
the end of the refusing window) in OpenAI's words, and nothing was taken. The ``Admission``
it returns carries OpenAI's ``x-ratelimit-*`` headers and, when the request ends, replaces
the token reservation by real usage (``settle``) or gives it back (``release``), on every
tpm counter in one call, and in none when usage equals the reservation.

Decisions:

- A request whose tokens alone exceed a tpm limit can never fit: 429 ``type=tokens``
  "Request too large", as OpenAI answers, but without ``Retry-After`` (waiting cannot help),
  and without a counter call.
- ``release`` gives back the tokens and keeps the request: a request that was admitted and
  then failed (bad model, guard, full queue) still counts toward rpm, as OpenAI counts failed
  requests; otherwise a client could loop on cheap failures for free.
- Fail closed: when the counter is unreachable (``StoreUnavailable``, Redis down) the error
  propagates (503) instead of admitting unlimited traffic. ``settle``/``release`` propagate it
  too; the reservation then stays counted until its window ends (over-counting, never under).
  An admit cancelled (client gone, deadline) or cut off while its call is in flight may
  have been counted in Redis unseen: that stays too.
"""

from __future__ import annotations

from shipway.config import RateLimitSettings
from shipway.errors import RateLimited
from shipway.security.principal import Principal
from shipway.store.counter import Counter, CounterResult, Hit

__all__ = ["Admission", "RateLimiter", "format_duration"]

_REQUESTS = "requests"
_TOKENS = "tokens"
# Counter keys: a prefix of the same length for both, then the scope (``key:12``, ``team:3``).
_RPM = "rl:rpm:"
_TPM = "rl:tpm:"
_SCOPE = len(_RPM)
# OpenAI's rule of thumb for English text; settle corrects any estimate from real usage.
_CHARS_PER_TOKEN = 4


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: Go's ``12ms``, ``1.5s``, ``6m0s``.

    Millisecond precision: the counters count in whole milliseconds.
    """
    ms = max(round(seconds * 1000), 0)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole, frac = divmod(ms, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _kind(index: int, first_tokens: int) -> str:
    return _REQUESTS if index < first_tokens else _TOKENS


def _tighter(held: CounterResult | None, new: CounterResult) -> CounterResult:
    """The limit the caller will hit first: the smaller remaining, then the later reset."""
    if held is None or new.remaining < held.remaining:
        return new
    if new.remaining == held.remaining and new.reset_after_s > held.reset_after_s:
        return new
    return held


def _headers(kind: bytes, result: CounterResult) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-ratelimit-limit-" + kind, str(result.limit).encode()),
        (b"x-ratelimit-remaining-" + kind, str(result.remaining).encode()),
        (b"x-ratelimit-reset-" + kind, format_duration(result.reset_after_s).encode()),
    ]


class Admission:
    """One admitted request's hold on the counters: its headers, and its token reservation."""

    __slots__ = ("_counter", "_done", "_held", "_requests", "_reserved", "_tokens")

    def __init__(
        self,
        counter: Counter | None,
        reserved: int,
        held: tuple[tuple[str, int], ...],
        requests: CounterResult | None,
        tokens: CounterResult | None,
    ) -> None:
        self._counter = counter
        self._reserved = reserved
        self._held = held  # (counter key, window) of every tpm counter reserved in
        self._requests = requests
        self._tokens = tokens
        self._done = False

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's ``x-ratelimit-*`` response headers (raw ASGI pairs) for the limits set.

        Where a key and its team both limit, the one with less left is reported. The token
        figures are as of admission, with this request's reservation taken.
        """
        headers: list[tuple[bytes, bytes]] = []
        if self._requests is not None:
            headers += _headers(b"requests", self._requests)
        if self._tokens is not None:
            headers += _headers(b"tokens", self._tokens)
        return headers

    async def settle(self, used_tokens: int) -> None:
        """Replace the token reservation by ``used_tokens`` on every tpm counter; once only.

        Counted against the window the reservation was made in: if that window has ended,
        there is nothing left to correct.
        """
        if used_tokens < 0:
            raise ValueError(f"used_tokens must be >= 0, got {used_tokens}")
        if self._done or self._counter is None:
            return
        # Marked before the first await, so a concurrent second call cannot settle twice.
        self._done = True
        if self._held and used_tokens != self._reserved:
            await self._counter.settle_many(self._held, self._reserved, used_tokens)

    async def release(self) -> None:
        """The request never ran: give its tokens back (its request still counts); once only."""
        await self.settle(0)


# Shared by every caller without limits: it holds nothing, so it has no state to spoil.
_NO_LIMITS = Admission(None, 0, (), None, None)


class RateLimiter:
    def __init__(self, counter: Counter, settings: RateLimitSettings) -> None:
        self._counter = counter
        self._window_s = settings.window_s
        self._reserve_tokens = settings.reserve_tokens
        self._per = "minute" if settings.window_s == 60 else format_duration(settings.window_s)

    def estimate_tokens(
        self, principal: Principal, *, prompt_chars: int, max_tokens: int | None
    ) -> int:
        """Tokens to reserve: the prompt at ~4 characters a token, plus the answer's tokens.

        ``max_tokens`` is the answer's cap (0 for embeddings). Without one, ``reserve_tokens``
        is reserved, but no more than the tightest tpm leaves after the prompt: a key whose
        tpm is under ``reserve_tokens`` can still call, and ``settle`` counts what the
        answer really used.
        """
        prompt = -(-prompt_chars // _CHARS_PER_TOKEN)
        if max_tokens is not None:
            return prompt + max_tokens
        answer = self._reserve_tokens
        for tpm in (principal.tpm, principal.team_tpm):
            if tpm is not None:
                answer = min(answer, max(tpm - prompt, 0))
        return prompt + answer

    async def admit(self, principal: Principal, *, tokens: int) -> Admission:
        """Take one request and ``tokens`` from every limit set, or none of them.

        Raises ``RateLimited`` (429) when a limit is used up or ``tokens`` can never fit,
        ``StoreUnavailable`` (503) when the counter cannot be reached.
        """
        p = principal
        if p.rpm is None and p.tpm is None and p.team_rpm is None and p.team_tpm is None:
            return _NO_LIMITS
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        window_s = self._window_s
        label = p.label
        team = None if p.team_id is None else f"team:{p.team_id}"
        # Requests first, then tokens; key, then team: the order refusals are reported in.
        # A hit's kind is its side of ``first_tokens`` and its scope is in its key, so nothing
        # but the hits is built on the way to an admission.
        hits: list[Hit] = []
        if p.rpm is not None:
            hits.append(Hit(_RPM + label, 1, p.rpm, window_s))
        if team is not None and p.team_rpm is not None:
            hits.append(Hit(_RPM + team, 1, p.team_rpm, window_s))
        first_tokens = len(hits)
        if p.tpm is not None:
            hits.append(Hit(_TPM + label, tokens, p.tpm, window_s))
        if team is not None and p.team_tpm is not None:
            hits.append(Hit(_TPM + team, tokens, p.team_tpm, window_s))
        for i, hit in enumerate(hits):
            if hit.amount > hit.limit:
                raise self._never_fits(
                    p, _kind(i, first_tokens), hit.key[_SCOPE:], hit.limit, hit.amount
                )

        counter = self._counter
        results = await counter.hit_many(hits)
        requests: CounterResult | None = None
        tokens_left: CounterResult | None = None
        for i, result in enumerate(results):
            if not result.allowed:
                # All or none: nothing was taken, so there is nothing to give back.
                hit = hits[i]
                raise self._refused(p, _kind(i, first_tokens), hit.key[_SCOPE:], result, hit.amount)
            if i < first_tokens:
                requests = _tighter(requests, result)
            else:
                tokens_left = _tighter(tokens_left, result)
        held = tuple((hits[i].key, results[i].window) for i in range(first_tokens, len(hits)))
        return Admission(counter, tokens, held, requests, tokens_left)

    def _who(self, principal: Principal, scope: str) -> str:
        if scope.startswith("team:"):
            return f"team '{principal.team or principal.team_id}'"
        if principal.prefix:
            return f"key '{principal.name}' ({principal.prefix}…)"
        return f"key '{principal.name}'"

    def _refused(
        self, principal: Principal, kind: str, scope: str, result: CounterResult, amount: int
    ) -> RateLimited:
        wait = format_duration(result.reset_after_s)
        return RateLimited(
            f"Rate limit reached for {kind} per {self._per} on {self._who(principal, scope)}: "
            f"Limit {result.limit}, Used {result.limit - result.remaining}, Requested {amount}. "
            f"Please try again in {wait}.",
            kind=kind,
            retry_after=result.reset_after_s,
            headers={
                name.decode(): value.decode() for name, value in _headers(kind.encode(), result)
            },
        )

    def _never_fits(
        self, principal: Principal, kind: str, scope: str, limit: int, amount: int
    ) -> RateLimited:
        who = self._who(principal, scope)
        if kind == _REQUESTS:
            message = (
                f"No requests are allowed on {who}: its requests per {self._per} limit is "
                f"{limit}. An admin can raise it."
            )
        else:
            message = (
                f"Request too large for tokens per {self._per} on {who}: Limit {limit}, "
                f"Requested {amount}. The input or output tokens must be reduced (a shorter "
                "prompt or a smaller `max_tokens`) for it to run."
            )
        # No Retry-After: waiting cannot make it fit, and clients sleep on the header.
        return RateLimited(message, kind=kind, retry_after=None)

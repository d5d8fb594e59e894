"""A GGUF chat model run by llama.cpp, one request at a time, inside a worker process.

The runner formats messages with the chat template stored in the GGUF file (message text
stays text: see ``chat_template``), counts prompt and completion tokens exactly, evaluates the
prompt ``n_batch`` tokens at a time and generates token by token so that it can stop on a
cancel, on a stop string, or at ``max_tokens``, and report logprobs without ``logits_all``
(which would slow every prompt down): the last row of logits is read right after each sample.
A request may carry a GBNF ``grammar`` (built by the gateway: backends/json_grammar.py) that
constrains sampling, and ask for ``n`` answers, sampled one after the other from the same
evaluated prompt; each delta says which answer (``index``) it belongs to.
"""

from __future__ import annotations

import codecs
import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shipway.backends.chat_template import ChatPromptTokenizer
from shipway.backends.local_errors import LocalModelError
from shipway.backends.model_files import file_sha256

__all__ = ["LlamaCppRunner"]

Emit = Callable[[dict[str, Any]], None]


class LlamaCppRunner:
    def __init__(self, path: Path, *, n_ctx: int, n_batch: int, threads: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.path = path
        self.sha256 = file_sha256(path)
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise LocalModelError("internal", f"{path} carries no chat template")
        self._prompt = ChatPromptTokenizer(self.llm, template)
        # How much of the context was evaluated as a prompt (in batches of two or more).
        self._prompt_evaluated = 0
        # While a prompt is evaluated, llama.cpp asks this between graph nodes whether to
        # abort: one n_batch chunk takes seconds on a small CPU, longer than a cancel may wait.
        self._abort_check: Callable[[], bool] = _never
        self._abort_callback = llama_cpp.ggml_abort_callback(lambda _: self._abort_check())

    def info(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "sha256": self.sha256,
            "n_ctx": self.n_ctx,
            "n_vocab": self._n_vocab,
        }

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        return self._prompt.tokens(messages)

    def text_tokens(self, text: str) -> list[int]:
        """A text completion's prompt: plain text (markers such as ``<|im_end|>`` are text, as
        in chat messages), after a BOS if the model wants one. An empty prompt is the BOS (or
        end-of-text) token alone, as OpenAI's legacy default prompt is ``<|endoftext|>``."""
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        return tokens or [self.llm.token_bos()]

    def chat(
        self, request: dict[str, Any], emit: Emit, cancelled: Callable[[], bool]
    ) -> dict[str, Any]:
        """Generate, ``emit`` text as it is decoded, return the finish reason and usage
        (and each answer's in ``choices``, when ``n`` > 1)."""
        text = request.get("prompt")
        source = "messages" if text is None else "prompt"
        prompt = self.prompt_tokens(request["messages"]) if text is None else self.text_tokens(text)
        n_prompt = len(prompt)
        max_tokens = request.get("max_tokens")
        room = self.n_ctx - n_prompt
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            asked = n_prompt + (max_tokens or 0)
            raise LocalModelError(
                "context_length_exceeded",
                f"This model's maximum context length is {self.n_ctx} tokens. However, you "
                f"requested {asked} tokens ({n_prompt} in the {source}, {max_tokens or 0} in the "
                f"completion). Please reduce the length of the {source} or completion.",
                param=source,
            )
        limit = room if max_tokens is None else max_tokens
        grammar = self._grammar(request.get("grammar"))
        seed = request.get("seed")
        choices: list[dict[str, Any]] = []
        for index in range(int(request.get("n") or 1)):
            # Independent samples; with a seed, choice i is seeded seed + i (repeatable).
            self.llm.set_seed(seed + index if seed is not None else random.getrandbits(31))

            def emit_choice(piece: dict[str, Any], index: int = index) -> None:
                emit({**piece, "index": index})

            choices.append(self._sample(prompt, limit, request, grammar, emit_choice, cancelled))
            if choices[-1]["finish_reason"] == "cancelled":
                break
        generated = sum(c["completion_tokens"] for c in choices)
        logprob_sum = sum(c.pop("logprob_sum") for c in choices)
        return {
            "finish_reason": choices[0]["finish_reason"],
            # The prompt once, however many samples: it is evaluated once (then reused).
            "prompt_tokens": n_prompt,
            "completion_tokens": generated,
            # The answer's confidence, whether or not the client asked for logprobs.
            "mean_logprob": round(logprob_sum / generated, 4) if generated else None,
            "choices": choices,
        }

    def _grammar(self, text: str | None) -> Any:
        """A ``LlamaGrammar`` for GBNF ``text`` (built by the gateway), checked here first:
        llama-cpp-python would add a grammar llama.cpp failed to parse as a null sampler."""
        if text is None:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar

        sampler = self._lib.llama_sampler_init_grammar(self._vocab, text.encode("utf-8"), b"root")
        if not sampler:
            raise LocalModelError("internal", "llama.cpp could not parse the request's grammar")
        self._lib.llama_sampler_free(sampler)
        return LlamaGrammar.from_string(text, verbose=False)

    def _sample(
        self,
        prompt: list[int],
        limit: int,
        request: dict[str, Any],
        grammar: Any,
        emit: Emit,
        cancelled: Callable[[], bool],
    ) -> dict[str, Any]:
        """One answer: its finish reason, token count and summed token log-probability."""
        want_logprobs = bool(request.get("logprobs"))
        top_n = int(request.get("top_logprobs") or 0)
        stop_strings: list[str] = [s for s in request.get("stop") or [] if s]
        text_out = _StopScanner(stop_strings, emit)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        finish = "length"
        generated = 0
        logprob_sum = 0.0
        if limit == 0:
            return {"finish_reason": finish, "completion_tokens": 0, "logprob_sum": 0.0}
        if not self._evaluate_prompt(prompt, cancelled):
            return {"finish_reason": "cancelled", "completion_tokens": 0, "logprob_sum": 0.0}
        tokens = self.llm.generate(
            prompt,
            temp=float(request.get("temperature", 1.0)),
            top_p=float(request.get("top_p", 1.0)),
            top_k=0,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=1.0,
            frequency_penalty=float(request.get("frequency_penalty", 0.0)),
            presence_penalty=float(request.get("presence_penalty", 0.0)),
            grammar=grammar,
        )
        # A grammar allows the end only once its answer is whole: never ignored then.
        ignore_eos = bool(request.get("ignore_eos")) and grammar is None
        for token in tokens:
            if not ignore_eos and self._lib.llama_vocab_is_eog(self._vocab, token):
                finish = "stop"
                break
            generated += 1
            piece = self.llm.detokenize([token])
            if want_logprobs:
                logprob = self._logprob_entry(token, piece, top_n)
                logprob_sum += logprob["logprob"]
            else:
                logprob = None
                logprob_sum += self._token_logprob(token)
            if text_out.feed(decoder.decode(piece), logprob):
                finish = "stop"
                break
            if generated >= limit:
                break
            if cancelled():
                finish = "cancelled"
                break
        if finish != "stop":
            text_out.feed(decoder.decode(b"", final=True), None)
        text_out.flush()
        return {"finish_reason": finish, "completion_tokens": generated, "logprob_sum": logprob_sum}

    def _evaluate_prompt(self, prompt: list[int], cancelled: Callable[[], bool]) -> bool:
        """Evaluate the whole prompt, ``n_batch`` tokens at a time; False if cancelled.

        ``Llama.generate`` evaluates a whole prompt in one uninterruptible call (a 2,000-token
        prompt takes seconds), so a cancel would wait for it. Done here, with a look at the
        cancel between chunks and inside them, it leaves ``generate`` the state it looks for:
        the context holds exactly ``prompt`` from a live decode, so it samples the first token
        from these logits without evaluating anything (llama-cpp-python 0.3.36, pinned).

        llama.cpp computes a batch of one token by another kernel than a batch of two or more
        (on the Q4_1 SmolLM2 the logits differ by up to 0.9, while batches of any size >= 2
        agree bit for bit). So no prompt token is ever evaluated alone: not the last one
        (which is how ``Llama.create_chat_completion`` and llama.cpp's server evaluate a
        prompt too, so greedy answers match theirs), not a single leftover in the last chunk,
        and a context reused from an earlier request is reused only as far as it was itself
        evaluated as a prompt (an earlier answer's tokens were decoded one at a time).
        """
        llm = self.llm
        # What the context holds from earlier requests is reused as far as it matches.
        held = llm.input_ids[: min(llm.n_tokens, self._prompt_evaluated)]
        keep = 0
        for have, want in zip(held, prompt, strict=False):
            if have != want:
                break
            keep += 1
        keep = max(0, min(keep, len(prompt) - 2))  # at least two tokens to decode
        if keep < llm.n_tokens and not llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            keep = 0  # memory that cannot drop a suffix (recurrent): eval() clears all of it
        llm.n_tokens = keep
        self._prompt_evaluated = keep
        lib = self._lib
        self._abort_check = cancelled
        lib.llama_set_abort_callback(llm.ctx, self._abort_callback, None)
        try:
            bounds = _chunk_bounds(keep, len(prompt), self.n_batch)
            for start, end in itertools.pairwise(bounds):
                if cancelled():
                    return False
                try:
                    llm.eval(prompt[start:end])
                except RuntimeError:
                    if cancelled():  # aborted: llama.cpp has dropped the unfinished chunk
                        return False
                    raise
                self._prompt_evaluated = llm.n_tokens
        finally:
            # Generation checks between tokens itself; a callback per graph node would cost.
            lib.llama_set_abort_callback(llm.ctx, lib.ggml_abort_callback(), None)
            self._abort_check = _never
        return True

    def _token_logprob(self, token: int) -> float:
        """log softmax(logits)[token] of the last sample, in float32 (~50 µs a token)."""
        pointer = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        top = float(logits.max())
        return float(logits[token]) - top - float(np.log(np.exp(logits - top).sum()))

    def _logprob_entry(self, token: int, piece: bytes, top_n: int) -> dict[str, Any]:
        pointer = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).astype(np.float64)
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        entry: dict[str, Any] = {
            "token": piece.decode("utf-8", errors="replace"),
            "logprob": float(logprobs[token]),
            "bytes": list(piece),
            "top_logprobs": [],
        }
        if top_n:
            best = np.argpartition(-logprobs, top_n)[:top_n]
            for candidate in best[np.argsort(-logprobs[best])]:
                raw = self.llm.detokenize([int(candidate)])
                entry["top_logprobs"].append(
                    {
                        "token": raw.decode("utf-8", errors="replace"),
                        "logprob": float(logprobs[candidate]),
                        "bytes": list(raw),
                    }
                )
        return entry


def _never() -> bool:
    return False


def _chunk_bounds(start: int, end: int, n_batch: int) -> list[int]:
    """Chunk edges for tokens ``start:end``: at most ``n_batch`` each, none a lone token.

    A one-token remainder is taken from the chunk before it (impossible with ``n_batch`` < 3).
    """
    bounds = [*range(start, end, n_batch), end]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1 and n_batch >= 3:
        bounds[-2] -= 1
    return bounds


class _StopScanner:
    """Holds back just enough text to catch a stop string split across tokens."""

    def __init__(self, stops: list[str], emit: Emit) -> None:
        self._stops = stops
        self._hold = max((len(s) for s in stops), default=1) - 1
        self._emit = emit
        self._buffer = ""
        self._logprobs: list[dict[str, Any]] = []

    def feed(self, text: str, logprob: dict[str, Any] | None) -> bool:
        """Add text; return True when a stop string was found (text before it is emitted)."""
        if logprob is not None:
            self._logprobs.append(logprob)
        self._buffer += text
        if self._stops:
            cut = min((i for s in self._stops if (i := self._buffer.find(s)) >= 0), default=-1)
            if cut >= 0:
                self._buffer = self._buffer[:cut]
                self.flush()
                return True
        ready = len(self._buffer) - self._hold
        if ready > 0 or self._logprobs:
            ready = max(ready, 0)
            self._send(self._buffer[:ready])
            self._buffer = self._buffer[ready:]
        return False

    def flush(self) -> None:
        if self._buffer or self._logprobs:
            self._send(self._buffer)
            self._buffer = ""

    def _send(self, text: str) -> None:
        message: dict[str, Any] = {"text": text}
        if self._logprobs:
            message["logprobs"] = self._logprobs
            self._logprobs = []
        self._emit(message)

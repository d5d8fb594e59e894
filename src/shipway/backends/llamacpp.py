"""A GGUF chat model run by llama.cpp, one request at a time, inside a worker process.

The runner formats messages with the chat template stored in the GGUF file, counts prompt
and completion tokens exactly, and generates token by token so that it can stop on a cancel,
on a stop string, or at ``max_tokens``, and report logprobs without ``logits_all`` (which
would slow every prompt down): the last row of logits is read right after each sample.
"""

from __future__ import annotations

import codecs
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shipway.backends.local_errors import LocalModelError
from shipway.backends.model_files import file_sha256

__all__ = ["LlamaCppRunner"]

Emit = Callable[[dict[str, Any]], None]


class LlamaCppRunner:
    def __init__(self, path: Path, *, n_ctx: int, n_batch: int, threads: int) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

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
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise LocalModelError("internal", f"{path} carries no chat template")
        eos_id, bos_id = self.llm.token_eos(), self.llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(eos_id),
            bos_token=self._token_text(bos_id),
            stop_token_ids=[eos_id],
        )

    def info(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "sha256": self.sha256,
            "n_ctx": self.n_ctx,
            "n_vocab": self._n_vocab,
        }

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        try:
            formatted = self._formatter(messages=messages)  # type: ignore[arg-type]
        except Exception as exc:
            raise LocalModelError(
                "invalid_request", f"the chat template rejected the messages: {exc}"
            ) from exc
        return list(
            self.llm.tokenize(
                formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
            )
        )

    def chat(
        self, request: dict[str, Any], emit: Emit, cancelled: Callable[[], bool]
    ) -> dict[str, Any]:
        """Generate, ``emit`` text as it is decoded, return the finish reason and usage."""
        prompt = self.prompt_tokens(request["messages"])
        n_prompt = len(prompt)
        max_tokens = request.get("max_tokens")
        room = self.n_ctx - n_prompt
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            asked = n_prompt + (max_tokens or 0)
            raise LocalModelError(
                "context_length_exceeded",
                f"This model's maximum context length is {self.n_ctx} tokens. However, you "
                f"requested {asked} tokens ({n_prompt} in the messages, {max_tokens or 0} in the "
                "completion). Please reduce the length of the messages or completion.",
                param="messages",
            )
        limit = room if max_tokens is None else max_tokens
        seed = request.get("seed")
        self.llm.set_seed(seed if seed is not None else random.getrandbits(31))
        want_logprobs = bool(request.get("logprobs"))
        top_n = int(request.get("top_logprobs") or 0)
        stop_strings: list[str] = [s for s in request.get("stop") or [] if s]
        text_out = _StopScanner(stop_strings, emit)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        finish = "length"
        generated = 0
        if limit == 0:
            return {"finish_reason": finish, "prompt_tokens": n_prompt, "completion_tokens": 0}
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
        )
        ignore_eos = bool(request.get("ignore_eos"))
        for token in tokens:
            if not ignore_eos and self._lib.llama_vocab_is_eog(self._vocab, token):
                finish = "stop"
                break
            generated += 1
            piece = self.llm.detokenize([token])
            logprob = self._logprob_entry(token, piece, top_n) if want_logprobs else None
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
        return {"finish_reason": finish, "prompt_tokens": n_prompt, "completion_tokens": generated}

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

"""The llama.cpp runner evaluates prompts in batches it can cancel between, on the real GGUF."""

from collections.abc import Callable
from typing import Any

import llama_cpp
import numpy as np
import pytest

from shipway.backends.llamacpp import LlamaCppRunner, _chunk_bounds
from shipway.backends.model_files import embedded_chat_model_path

N_BATCH = 32
LONG_PROMPT = "count with me: " + "one two three " * 60


@pytest.fixture(scope="module")
def runner() -> LlamaCppRunner:
    return LlamaCppRunner(embedded_chat_model_path(), n_ctx=512, n_batch=N_BATCH, threads=1)


@pytest.fixture(scope="module")
def direct() -> llama_cpp.Llama:
    """llama-cpp-python called directly, with its default n_batch (a prompt in one batch)."""
    return llama_cpp.Llama(str(embedded_chat_model_path()), n_ctx=512, n_threads=1, verbose=False)


def _chat(
    runner: LlamaCppRunner, content: str, cancelled: Callable[[], bool] = lambda: False
) -> tuple[dict[str, Any], str, list[float]]:
    """Greedy: the same context state must give the same text and logprobs."""
    request = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 6,
        "temperature": 0.0,
        "seed": 1,
        "logprobs": True,
        "ignore_eos": True,
    }
    text: list[str] = []
    logprobs: list[float] = []

    def emit(piece: dict[str, Any]) -> None:
        text.append(piece["text"])
        logprobs.extend(entry["logprob"] for entry in piece.get("logprobs", ()))

    done = runner.chat(request, emit, cancelled)
    return done, "".join(text), logprobs


def test_a_cancel_stops_prompt_evaluation_between_batches(runner: LlamaCppRunner) -> None:
    done, text, _ = _chat(runner, LONG_PROMPT, cancelled=lambda: runner.llm.n_tokens >= 2 * N_BATCH)
    assert done["finish_reason"] == "cancelled"
    assert done["completion_tokens"] == 0 and not text
    assert done["prompt_tokens"] > 4 * N_BATCH
    assert runner.llm.n_tokens == 2 * N_BATCH  # stopped before the third batch


def test_a_cancel_aborts_a_batch_that_is_being_evaluated(runner: LlamaCppRunner) -> None:
    looks = 0

    def cancelled() -> bool:
        nonlocal looks
        looks += 1
        return looks > 50  # llama.cpp looks between graph nodes, hundreds of times a batch

    runner.llm.reset()
    done, text, _ = _chat(runner, LONG_PROMPT, cancelled)
    assert done["finish_reason"] == "cancelled" and not text
    assert runner.llm.n_tokens == 0  # the first batch was abandoned halfway
    assert looks < 100
    # The context is left usable: nothing of the abandoned batch lingers.
    assert _chat(runner, "Hi")[0]["finish_reason"] == "length"


def test_what_earlier_requests_left_in_the_context_does_not_change_an_answer(
    runner: LlamaCppRunner,
) -> None:
    question = "What is the capital of France? " * 8
    runner.llm.reset()
    fresh = _chat(runner, question)
    # A longer prompt, a prompt sharing only the template's prefix, a cancelled one, a repeat.
    _chat(runner, question + "And of Spain?")
    _chat(runner, "Something else entirely.")
    _chat(runner, question + " more" * 100, lambda: runner.llm.n_tokens > N_BATCH * 2)
    for _ in range(2):
        done, text, logprobs = _chat(runner, question)
        assert (done, text) == fresh[:2]
        assert logprobs == pytest.approx(fresh[2], abs=1e-2)


def test_a_greedy_answer_is_the_one_llama_cpp_python_gives_on_a_fresh_context(
    runner: LlamaCppRunner, direct: llama_cpp.Llama
) -> None:
    """llama.cpp computes a lone token by another kernel than a batch of two or more.

    The runner once evaluated the prompt's last token on its own (and here, with n_batch 32,
    would also have left the 33-token prompt's last chunk one token long): the first token's
    logits moved by up to 0.9 and "Say hello." went "... here to help with any kind of
    magical" where llama-cpp-python says "... here to help you with whatever you need".
    """
    messages = [{"role": "user", "content": "Say hello."}]
    prompt = runner.prompt_tokens(messages)
    assert len(prompt) == N_BATCH + 1
    direct.reset()  # type: ignore[no-untyped-call]
    direct.eval(prompt)
    pointer = llama_cpp.llama_get_logits_ith(direct.ctx, -1)
    logits = np.ctypeslib.as_array(pointer, shape=(direct.n_vocab(),)).astype(np.float64)
    expected = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    direct.reset()  # type: ignore[no-untyped-call]
    answer: Any = direct.create_chat_completion(
        messages=messages,  # type: ignore[arg-type]
        temperature=0.0,
        max_tokens=20,
    )
    # Whatever the context held before: another prompt and answer, then this one twice.
    _chat(runner, "Name three colours.")
    for _ in range(2):
        request = {
            "messages": messages,
            "max_tokens": 20,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": 5,
        }
        pieces: list[dict[str, Any]] = []
        runner.chat(request, pieces.append, lambda: False)
        first = next(entry for piece in pieces for entry in piece.get("logprobs", ()))
        best = np.argsort(-expected)[:5]
        assert [e["logprob"] for e in first["top_logprobs"]] == pytest.approx(
            expected[best].tolist(), abs=1e-4
        )
        text = "".join(piece["text"] for piece in pieces)
        assert text == answer["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("start", "end", "n_batch", "bounds"),
    [
        (0, 33, 32, [0, 31, 33]),
        (0, 64, 32, [0, 32, 64]),
        (0, 65, 32, [0, 32, 63, 65]),
        (5, 7, 32, [5, 7]),
        (0, 1, 32, [0, 1]),
        (0, 5, 2, [0, 2, 4, 5]),  # too small a batch to avoid a lone token
    ],
)
def test_prompt_chunks_leave_no_token_alone(
    start: int, end: int, n_batch: int, bounds: list[int]
) -> None:
    assert _chunk_bounds(start, end, n_batch) == bounds

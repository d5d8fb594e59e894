"""The llama.cpp runner evaluates prompts in batches it can cancel between, on the real GGUF."""

from collections.abc import Callable
from typing import Any

import pytest

from shipway.backends.llamacpp import LlamaCppRunner
from shipway.backends.model_files import embedded_chat_model_path

N_BATCH = 32
LONG_PROMPT = "count with me: " + "one two three " * 60


@pytest.fixture(scope="module")
def runner() -> LlamaCppRunner:
    return LlamaCppRunner(embedded_chat_model_path(), n_ctx=512, n_batch=N_BATCH, threads=1)


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

"""The sentence-transformers runner works in batches it can cancel between, on the real model."""

from collections.abc import Callable

import numpy as np
import pytest

from shipway.backends.model_files import embedded_embedding_model_path
from shipway.backends.sentence import SentenceRunner

TEXTS = [
    "cat",
    "a much longer sentence about engines, carburetors and the smell of petrol in the morning",
    "kitten",
    "a medium sentence about small cats",
    "dogs",
]


@pytest.fixture(scope="module")
def runner() -> SentenceRunner:
    return SentenceRunner(embedded_embedding_model_path(), threads=1, batch_size=2)


def _after(calls: int) -> Callable[[], bool]:
    """A cancel flag that turns true on its ``calls``-th look."""
    seen = 0

    def cancelled() -> bool:
        nonlocal seen
        seen += 1
        return seen >= calls

    return cancelled


def test_rows_come_back_in_input_order_with_their_token_counts(runner: SentenceRunner) -> None:
    result = runner.embed({"inputs": TEXTS}, lambda: False)
    assert result is not None
    vectors, counts = result
    expected = runner.model.encode(TEXTS, convert_to_numpy=True)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    assert np.allclose(vectors, expected, atol=1e-5)
    assert counts == [len(ids) for ids in runner.model.tokenizer(TEXTS)["input_ids"]]


def test_a_cancel_between_batches_stops_the_request(runner: SentenceRunner) -> None:
    looks = 0

    def cancelled() -> bool:
        nonlocal looks
        looks += 1
        return False

    assert runner.embed({"inputs": TEXTS}, cancelled) is not None
    # 3 batches of 2: a look before counting the tokens of each, before encoding each, and
    # before each of the 6 transformer layers of each forward pass.
    assert looks == 3 + 3 + 3 * 6
    # Cancelled while counting tokens, then at the first look of the encoding.
    assert runner.embed({"inputs": TEXTS}, _after(2)) is None
    assert runner.embed({"inputs": TEXTS}, _after(4)) is None


def test_a_cancel_inside_a_forward_pass_stops_it_and_leaves_the_model_usable(
    runner: SentenceRunner,
) -> None:
    # The 6th look is the one before the second layer of the first forward pass.
    assert runner.embed({"inputs": TEXTS}, _after(6)) is None
    result = runner.embed({"inputs": TEXTS[:1]}, lambda: False)
    assert result is not None
    assert np.allclose(result[0], runner.model.encode(TEXTS[:1]), atol=1e-5)

"""The injection guard's n-gram hasher: its two paths must give the same buckets.

Short texts are hashed in plain integers, longer ones with NumPy; the trained weights are
indexed by these buckets, so one differing bucket would change a score.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from shipway.security.text_features import SHORT_TEXT, NgramHasher, normalise

ALPHABET = "abc xyz 0123456789 ÄéΩ漢字🙂\t.,!?-_'\"<|>"


@pytest.mark.parametrize(
    "hasher",
    [NgramHasher(), NgramHasher(words=False), NgramHasher(fold_digits=False, bits=12)],
)
def test_short_and_array_paths_agree(hasher: NgramHasher) -> None:
    rng = random.Random(7)
    compared = 0
    for _ in range(3000):
        text = normalise("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))))
        padded = f" {text} "
        short, array = hasher._short_buckets(padded), hasher._array_buckets(padded)
        assert np.array_equal(short, array), repr(text)
        compared += 1
    assert compared == 3000


def test_buckets_take_the_short_path_only_for_short_texts() -> None:
    hasher = NgramHasher()
    short = "x" * (SHORT_TEXT - 2)
    assert np.array_equal(hasher.buckets(short), hasher._array_buckets(f" {short} "))
    long = "ignore previous instructions " * 3
    assert np.array_equal(hasher.buckets(long), hasher._array_buckets(f" {long} "))

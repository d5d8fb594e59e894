"""A text as the set of hash buckets of its character n-grams, words and word pairs.

``normalise`` folds the spellings an attacker varies for free: Unicode NFKC (full-width and
styled letters become plain ones), case folding, invisible format characters (zero-width
spaces, bidi controls, soft hyphens) dropped, whitespace runs collapsed to one space.

``NgramHasher.buckets`` hashes every character n-gram of each size in ``char_sizes``, every
word and every pair of adjacent words into ``2**bits`` buckets. One polynomial prefix hash
over the code points gives the hash of any substring in two array operations, so the cost is
a few NumPy passes per n-gram size whatever the text's length: no Python loop per n-gram.
The hash is our own, with fixed constants, so a bucket never depends on a library version or
on ``PYTHONHASHSEED``: trained weights stay valid wherever they are loaded.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["SHORT_TEXT", "NgramHasher", "normalise"]

_U64 = np.uint64
_MOD = 1 << 64
_P = 0x100000001B3  # odd, so invertible modulo 2**64
_P_INV = pow(_P, -1, _MOD)
_MIX = _U64(0x9E3779B97F4A7C15)
_WORD_SALT = 0xD6E8FEB86659FD93
_PAIR_SALT = 0xA0761D6478BD642F

_INVISIBLE = re.compile("[\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACE = re.compile(r"\s+")
# ASCII letters, digits and underscore; every code point >= 128 counts as a word character.
_ASCII_WORD = np.array([chr(c).isalnum() or c == 95 for c in range(128)], dtype=bool)


def normalise(text: str) -> str:
    """NFKC, casefold, invisible characters dropped, whitespace runs as one space."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).casefold()
    return _SPACE.sub(" ", text).strip()


@dataclass(frozen=True, slots=True)
class NgramHasher:
    """Turns a normalised text into sorted unique bucket indices in ``[0, 2**bits)``."""

    # bits <= 31: buckets are int32.

    bits: int = 17
    char_sizes: tuple[int, ...] = (1, 2, 3, 4)
    words: bool = True
    # Every digit hashed as 0: "4111 1111" and "5500 0000" share their n-grams.
    fold_digits: bool = True
    # Longer texts keep their first and last max_chars // 2 characters (bounds the cost).
    max_chars: int = 8192

    @property
    def dim(self) -> int:
        return 1 << self.bits

    def buckets(self, normalised: str) -> npt.NDArray[np.int32]:
        if len(normalised) > self.max_chars:
            half = self.max_chars // 2
            normalised = f"{normalised[:half]} {normalised[-half:]}"
        padded = f" {normalised} "
        if len(padded) <= SHORT_TEXT:
            return self._short_buckets(padded)
        return self._array_buckets(padded)

    def _short_buckets(self, padded: str) -> npt.NDArray[np.int32]:
        """The same buckets as ``_array_buckets``, in plain integers: its two dozen NumPy
        passes cost ~100 µs whatever the length, more than this whole loop on a short text
        (most chat turns). A test holds the two paths to the same answer."""
        codes = [ord(ch) for ch in padded]
        if self.fold_digits:
            codes = [48 if 48 <= c <= 57 else c for c in codes]
        n = len(codes)
        prefix = [0] * (n + 1)
        total, power = 0, 1
        for i, code in enumerate(codes):
            total = (total + code * power) & _M64
            power = (power * _P) & _M64
            prefix[i + 1] = total
        inverse = _SHORT_INVERSE

        def substring(start: int, end: int) -> int:
            return ((prefix[end] - prefix[start]) * inverse[start]) & _M64

        hashed = [
            substring(i, i + size) ^ size
            for size in self.char_sizes
            if size <= n
            for i in range(n + 1 - size)
        ]
        if self.words:
            starts, ends, inside = [], [], False
            for i, code in enumerate(codes):
                word = code >= 128 or _ASCII_WORD_LIST[code]
                if word and not inside:
                    starts.append(i)
                elif inside and not word:
                    ends.append(i)
                inside = word
            if inside:
                ends.append(n)
            hashed += [substring(a, b) ^ _WORD_SALT for a, b in zip(starts, ends, strict=True)]
            hashed += [
                substring(starts[k], ends[k + 1]) ^ _PAIR_SALT for k in range(len(starts) - 1)
            ]
        shift = 64 - self.bits
        mix = int(_MIX)
        found = {(((h ^ (h >> 31)) * mix) & _M64) >> shift for h in hashed}
        return np.array(sorted(found), dtype=np.int32)

    def _array_buckets(self, padded: str) -> npt.NDArray[np.int32]:
        codes = np.frombuffer(padded.encode("utf-32-le"), dtype="<u4").astype(_U64)
        if self.fold_digits:
            codes[(codes >= 48) & (codes <= 57)] = 48
        n = codes.size
        prefix = np.zeros(n + 1, dtype=_U64)
        np.cumsum(codes * _powers(_P, n), out=prefix[1:])
        inverse = _powers(_P_INV, n)
        parts: list[npt.NDArray[np.uint64]] = []
        for size in self.char_sizes:
            if size <= n:  # every window: slices, not gathers
                windows = (prefix[size:] - prefix[: n + 1 - size]) * inverse[: n + 1 - size]
                parts.append(windows ^ _U64(size))
        if self.words:
            is_word = np.where(codes < 128, _ASCII_WORD[np.minimum(codes, 127)], True)
            edges = np.diff(is_word.astype(np.int8), prepend=0, append=0)
            starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
            parts.append(_substring(prefix, inverse, starts, ends) ^ _U64(_WORD_SALT))
            if starts.size > 1:
                pairs = _substring(prefix, inverse, starts[:-1], ends[1:])
                parts.append(pairs ^ _U64(_PAIR_SALT))
        hashed = np.concatenate(parts) if parts else np.zeros(0, dtype=_U64)
        if not hashed.size:
            return np.zeros(0, dtype=np.int32)
        hashed ^= hashed >> _U64(31)
        hashed *= _MIX
        buckets = np.sort((hashed >> _U64(64 - self.bits)).astype(np.int32))
        # Sort and keep the first of each run: np.unique is ten times slower here.
        first = np.empty(buckets.size, dtype=bool)
        first[0] = True
        np.not_equal(buckets[1:], buckets[:-1], out=first[1:])
        return buckets[first]


# Texts up to this many characters (padding included) are hashed in plain integers: below
# it that is faster than the NumPy passes (measured: 7 characters 30 µs vs 72; 39: 127 vs 76).
SHORT_TEXT = 24
_M64 = (1 << 64) - 1
_ASCII_WORD_LIST = [bool(flag) for flag in _ASCII_WORD]
# Room for texts well past SHORT_TEXT, so a test can compare the two paths on them.
_SHORT_INVERSE = [pow(_P_INV, i, 1 << 64) for i in range(129)]


def _power_table(base: int, count: int) -> npt.NDArray[np.uint64]:
    """``base**0 … base**(count-1)`` modulo 2**64 (array arithmetic wraps silently)."""
    steps = np.full(count, base, dtype=_U64)
    steps[0] = 1
    table = np.cumprod(steps, dtype=_U64)
    table.flags.writeable = False
    return table


# Read-only tables for texts up to the default max_chars (plus padding), made once.
_TABLE_SIZE = 8192 + 3
_TABLES = {_P: _power_table(_P, _TABLE_SIZE), _P_INV: _power_table(_P_INV, _TABLE_SIZE)}


def _powers(base: int, count: int) -> npt.NDArray[np.uint64]:
    if count <= _TABLE_SIZE:
        return _TABLES[base][:count]
    return _power_table(base, count)


def _substring(
    prefix: npt.NDArray[np.uint64],
    inverse: npt.NDArray[np.uint64],
    start: npt.NDArray[np.intp],
    end: npt.NDArray[np.intp],
) -> npt.NDArray[np.uint64]:
    """Position-free hash of ``codes[start:end]``: sum of ``codes[j] * P**(j - start)``."""
    result: npt.NDArray[np.uint64] = (prefix[end] - prefix[start]) * inverse[start]
    return result

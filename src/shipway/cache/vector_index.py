"""One model's conversation vectors in this process, searched by cosine similarity.

Vectors are grouped by partition (see ``keys.py``): a search only ever compares vectors of
the same scope, model version and parameters, so one matrix product over a partition's rows
answers it. At most ``max_entries`` are kept, the oldest going first; an expired row stays
until it is pushed out or replaced, but is never returned.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from numpy.typing import NDArray

__all__ = ["VectorIndex", "unit"]

_FIRST_ROWS = 8


def unit(vector: object) -> NDArray[np.float32] | None:
    """``vector`` as float32 of length 1 (cosine is then a dot product), or None if zero."""
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(array))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return array / norm


class _Partition:
    def __init__(self, dimensions: int) -> None:
        self.vectors = np.zeros((_FIRST_ROWS, dimensions), dtype=np.float32)
        self.expires = np.zeros(_FIRST_ROWS, dtype=np.float64)
        self.digests: list[str] = []
        self.rows: dict[str, int] = {}

    @property
    def dimensions(self) -> int:
        return int(self.vectors.shape[1])

    def append(self, digest: str, vector: NDArray[np.float32], expires_at: float) -> None:
        row = len(self.digests)
        if row == len(self.vectors):  # grow by doubling: appends stay amortised O(1)
            self.vectors = np.concatenate([self.vectors, np.zeros_like(self.vectors)])
            self.expires = np.concatenate([self.expires, np.zeros_like(self.expires)])
        self.vectors[row] = vector
        self.expires[row] = expires_at
        self.digests.append(digest)
        self.rows[digest] = row

    def remove(self, digest: str) -> None:
        row = self.rows.pop(digest)
        last = len(self.digests) - 1
        if row != last:  # the last row fills the hole
            moved = self.digests[last]
            self.vectors[row] = self.vectors[last]
            self.expires[row] = self.expires[last]
            self.digests[row] = moved
            self.rows[moved] = row
        self.digests.pop()


class VectorIndex:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._order: OrderedDict[str, str] = OrderedDict()  # digest → partition, oldest first
        self._partitions: dict[str, _Partition] = {}

    def __len__(self) -> int:
        return len(self._order)

    def add(
        self, partition: str, digest: str, vector: NDArray[np.float32], expires_at: float
    ) -> None:
        """Index a unit ``vector`` (see ``unit``); a digest already held is replaced."""
        self.remove(digest)
        part = self._partitions.get(partition)
        if part is not None and part.dimensions != len(vector):
            # Another embedding model wrote these rows: they cannot be compared any more.
            for old in list(part.digests):
                self.remove(old)
            part = None
        if part is None:
            part = self._partitions[partition] = _Partition(len(vector))
        part.append(digest, vector, expires_at)
        self._order[digest] = partition
        while len(self._order) > self.max_entries:
            self.remove(next(iter(self._order)))

    def remove(self, digest: str) -> None:
        partition = self._order.pop(digest, None)
        if partition is None:
            return
        part = self._partitions[partition]
        part.remove(digest)
        if not part.digests:
            del self._partitions[partition]

    def nearest(
        self, partition: str, vector: NDArray[np.float32], *, threshold: float, now: float
    ) -> tuple[str, float] | None:
        """The closest live entry of ``partition`` with cosine >= ``threshold``, if any."""
        part = self._partitions.get(partition)
        if part is None or part.dimensions != len(vector):
            return None
        size = len(part.digests)
        scores = part.vectors[:size] @ vector
        scores[part.expires[:size] <= now] = -np.inf
        best = int(np.argmax(scores))
        score = float(scores[best])
        if score < threshold:
            return None
        return part.digests[best], min(score, 1.0)

"""An embedding model run by sentence-transformers inside a worker process.

Loaded from a local folder only (``HF_HUB_OFFLINE=1`` is set by the worker before any
Hugging Face import), so nothing is fetched from a hub. An input longer than the model's
``max_seq_length`` is an error, as with OpenAI, rather than silently truncated. A request
is encoded ``batch_size`` inputs at a time and checks for a cancel between batches and
between transformer layers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shipway.backends.local_errors import LocalModelError
from shipway.backends.model_files import file_sha256

__all__ = ["SentenceRunner"]


class SentenceRunner:
    def __init__(self, path: Path, *, threads: int, batch_size: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.path = path
        self.sha256 = file_sha256(path)
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.batch_size = batch_size
        self.max_tokens = int(self.model.max_seq_length or 512)
        self.dimensions = int(self.model.get_embedding_dimension() or 0)
        self._cancelled: Callable[[], bool] = _never
        # One forward pass of a full batch of long inputs takes seconds on one thread; a look
        # before each transformer layer bounds how long a cancel waits to a layer's share.
        for module in self.model.modules():
            if isinstance(module, torch.nn.ModuleList):
                for layer in module:
                    layer.register_forward_pre_hook(self._check_cancel)

    def info(self) -> dict[str, Any]:
        return {
            "folder": str(self.path),
            "sha256": self.sha256,
            "dimensions": self.dimensions,
            "max_input_tokens": self.max_tokens,
        }

    def embed(
        self, request: dict[str, Any], cancelled: Callable[[], bool]
    ) -> tuple[np.ndarray[Any, Any], list[int]] | None:
        """Vectors and token counts, or None when ``cancelled()`` turned true on the way.

        Work goes ``batch_size`` inputs at a time with a look at ``cancelled`` in between (and
        between transformer layers), so that a cancelled 2,048-input request stops within a
        fraction of a second instead of running for minutes and being killed.
        """
        inputs: list[str] = request["inputs"]
        dimensions = request.get("dimensions")
        if dimensions is not None and dimensions != self.dimensions:
            raise LocalModelError(
                "invalid_request",
                f"this model makes {self.dimensions}-dimensional vectors; "
                f"`dimensions` {dimensions} is not supported",
                param="dimensions",
            )
        self._cancelled = cancelled
        try:
            lengths = self._token_counts(inputs)
            for index, length in enumerate(lengths):
                if length > self.max_tokens:
                    raise LocalModelError(
                        "context_length_exceeded",
                        f"input[{index}] is {length} tokens; this model's maximum input length "
                        f"is {self.max_tokens} tokens. Split the text into smaller pieces.",
                        param="input",
                    )
            return self._encode(inputs, lengths), lengths
        except _Cancelled:
            return None
        finally:
            self._cancelled = _never

    def _token_counts(self, inputs: list[str]) -> list[int]:
        lengths: list[int] = []
        for start in range(0, len(inputs), self.batch_size):
            self._check_cancel()
            encoded = self.model.tokenizer(inputs[start : start + self.batch_size])
            lengths += [len(ids) for ids in encoded["input_ids"]]
        return lengths

    def _encode(self, inputs: list[str], lengths: list[int]) -> np.ndarray[Any, Any]:
        # Longest first, as encode() itself sorts, so that a batch pads to similar lengths.
        order = sorted(range(len(inputs)), key=lambda i: -lengths[i])
        rows = []
        for start in range(0, len(order), self.batch_size):
            self._check_cancel()
            batch = [inputs[i] for i in order[start : start + self.batch_size]]
            rows.append(
                self.model.encode(
                    batch,
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            )
        if not rows:
            return np.empty((0, self.dimensions), dtype=np.float32)
        stacked = np.concatenate(rows).astype(np.float32, copy=False)
        vectors = np.empty_like(stacked)
        vectors[order] = stacked
        return vectors

    def _check_cancel(self, *_: Any) -> None:
        if self._cancelled():
            raise _Cancelled


class _Cancelled(Exception):
    """Raised out of a forward pass (or between batches) to abandon a cancelled request."""


def _never() -> bool:
    return False

"""An embedding model run by sentence-transformers inside a worker process.

Loaded from a local folder only (``HF_HUB_OFFLINE=1`` is set by the worker before any
Hugging Face import), so nothing is fetched from a hub. An input longer than the model's
``max_seq_length`` is an error, as with OpenAI, rather than silently truncated.
"""

from __future__ import annotations

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

    def info(self) -> dict[str, Any]:
        return {
            "folder": str(self.path),
            "sha256": self.sha256,
            "dimensions": self.dimensions,
            "max_input_tokens": self.max_tokens,
        }

    def embed(self, request: dict[str, Any]) -> tuple[np.ndarray[Any, Any], list[int]]:
        inputs: list[str] = request["inputs"]
        dimensions = request.get("dimensions")
        if dimensions is not None and dimensions != self.dimensions:
            raise LocalModelError(
                "invalid_request",
                f"this model makes {self.dimensions}-dimensional vectors; "
                f"`dimensions` {dimensions} is not supported",
                param="dimensions",
            )
        lengths = [len(ids) for ids in self.model.tokenizer(inputs)["input_ids"]]
        for index, length in enumerate(lengths):
            if length > self.max_tokens:
                raise LocalModelError(
                    "context_length_exceeded",
                    f"input[{index}] is {length} tokens; this model's maximum input length is "
                    f"{self.max_tokens} tokens. Split the text into smaller pieces.",
                    param="input",
                )
        vectors = self.model.encode(
            inputs,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32), lengths

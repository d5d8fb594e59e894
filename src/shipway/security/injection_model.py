"""The trained injection classifier: a linear model over hashed n-grams, and its file.

A text's features are the buckets its n-grams hash to (``text_features.NgramHasher``), each
worth ``1 / sqrt(number of buckets)`` (a binary vector scaled to unit length); the score is
``sigmoid(bias + weights · features)``. Scoring one text is a hash pass, a gather and a sum:
NumPy only, no scikit-learn, nothing loaded from the network.

The file (``injection_model.zip`` beside this module, written by ``train_injection``) is a
zip with fixed timestamps, so retraining on the same corpus writes the same bytes:
``meta.json`` (hasher settings, bias, threshold, how it was trained) and ``weights.npy``
(float16).
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shipway.security.text_features import NgramHasher

__all__ = ["DEFAULT_MODEL_FILE", "InjectionModel"]

DEFAULT_MODEL_FILE = "injection_model.zip"
_FORMAT = 1
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class InjectionModel:
    hasher: NgramHasher
    weights: npt.NDArray[np.float32]
    bias: float
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)

    def score(self, normalised: str) -> float:
        """Probability-like score in [0, 1] that a normalised text is an attack."""
        buckets = self.hasher.buckets(normalised)
        margin = self.bias
        if buckets.size:
            total = self.weights[buckets].sum(dtype=np.float64)
            margin += float(total) / math.sqrt(buckets.size)
        return 1.0 / (1.0 + math.exp(-margin))

    # -- the file ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path | None = None) -> InjectionModel:
        """The shipped model, or the one at ``path``."""
        if path is None:
            data = (resources.files("shipway.security") / DEFAULT_MODEL_FILE).read_bytes()
        else:
            data = path.read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            meta = json.loads(archive.read("meta.json"))
            weights = np.load(io.BytesIO(archive.read("weights.npy")), allow_pickle=False)
        if meta.get("format") != _FORMAT:
            raise ValueError(f"unknown injection model format {meta.get('format')!r}")
        settings = meta["hasher"]
        hasher = NgramHasher(
            bits=int(settings["bits"]),
            char_sizes=tuple(int(size) for size in settings["char_sizes"]),
            words=bool(settings["words"]),
            fold_digits=bool(settings["fold_digits"]),
            max_chars=int(settings["max_chars"]),
        )
        if weights.shape != (hasher.dim,):
            raise ValueError(f"weights of shape {weights.shape}, expected ({hasher.dim},)")
        return cls(
            hasher,
            weights.astype(np.float32),
            float(meta["bias"]),
            float(meta["threshold"]),
            meta.get("training", {}),
        )

    def save(self, path: Path) -> None:
        meta = {
            "format": _FORMAT,
            "hasher": {
                "bits": self.hasher.bits,
                "char_sizes": list(self.hasher.char_sizes),
                "words": self.hasher.words,
                "fold_digits": self.hasher.fold_digits,
                "max_chars": self.hasher.max_chars,
            },
            "bias": self.bias,
            "threshold": self.threshold,
            "training": self.meta,
        }
        weights = io.BytesIO()
        np.save(weights, self.weights.astype(np.float16), allow_pickle=False)
        with zipfile.ZipFile(path, "w") as archive:
            _write(archive, "meta.json", json.dumps(meta, indent=1, sort_keys=True).encode())
            _write(archive, "weights.npy", weights.getvalue())


def _write(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data, compresslevel=9)

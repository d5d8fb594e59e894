"""One model's cache settings: the top-level `cache` with its `models.<alias>.cache` over it.

Resolved once per model when the cache is built, so a lookup reads plain attributes
instead of merging two settings objects on every request.
"""

from __future__ import annotations

from dataclasses import dataclass

from shipway.config_costs import CacheOverrides, CacheSettings, ExactCacheMode

__all__ = ["CachePolicy", "resolve_policy"]


@dataclass(frozen=True, slots=True)
class CachePolicy:
    exact: ExactCacheMode
    ttl_s: float
    stale_s: float
    max_entries: int
    max_entry_bytes: int
    semantic: bool
    semantic_threshold: float


def resolve_policy(base: CacheSettings, overrides: CacheOverrides | None) -> CachePolicy:
    """``base`` with every field ``overrides`` sets replacing it."""
    merged = base.model_dump()
    if overrides is not None:
        merged.update(overrides.model_dump(exclude_none=True))
    return CachePolicy(
        exact=merged["exact"],
        ttl_s=merged["ttl_s"],
        stale_s=merged["stale_s"],
        max_entries=merged["max_entries"],
        max_entry_bytes=merged["max_entry_bytes"],
        semantic=merged["semantic"],
        semantic_threshold=merged["semantic_threshold"],
    )

"""``Principal``: who is calling, with everything the later stages decide on.

Built by the key service from a key and its team (``Principal.from_key``), or the one
``ANONYMOUS`` principal when no key exists yet and the server is open. It rides on the
``Call``: model access, rate limits, input caps and guard policies read it, and the access
log and the audit log name it. It holds no secret (not even the key's hash).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shipway.store.keys import KeyRecord
from shipway.store.teams import TeamRecord

__all__ = ["ANONYMOUS", "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: int | None
    """None: the anonymous caller of an open server (no key exists)."""
    name: str
    prefix: str
    team_id: int | None
    team: str | None
    models: frozenset[str] | None
    """Models this caller may use: the key's list and the team's, intersected; None: all."""
    rpm: int | None
    tpm: int | None
    team_rpm: int | None
    team_tpm: int | None
    max_tokens: int | None
    max_prompt_tokens: int | None
    """Largest prompt, in tokens, this key may send (None: the model's limit only)."""
    injection_policy: str | None
    """The key's own guard policies (None: the model's)."""
    pii_policy: str | None
    admin: bool
    expires_at: datetime | None

    @classmethod
    def from_key(cls, key: KeyRecord, team: TeamRecord | None) -> Principal:
        models: frozenset[str] | None = None if key.models is None else frozenset(key.models)
        if team is not None and team.models is not None:
            team_models = frozenset(team.models)
            models = team_models if models is None else models & team_models
        guards = key.guards or {}
        return cls(
            key_id=key.id,
            name=key.name,
            prefix=key.prefix,
            team_id=key.team_id,
            team=None if team is None else team.name,
            models=models,
            rpm=key.rpm,
            tpm=key.tpm,
            team_rpm=None if team is None else team.rpm,
            team_tpm=None if team is None else team.tpm,
            max_tokens=key.max_tokens,
            max_prompt_tokens=key.max_prompt_tokens,
            injection_policy=guards.get("injection"),
            pii_policy=guards.get("pii"),
            admin=key.admin,
            expires_at=key.expires_at,
        )

    @property
    def label(self) -> str:
        """How logs and the audit log name the caller: ``key:12`` or ``anonymous``."""
        return "anonymous" if self.key_id is None else f"key:{self.key_id}"

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = Principal(
    key_id=None,
    name="anonymous",
    prefix="",
    team_id=None,
    team=None,
    models=None,
    rpm=None,
    tpm=None,
    team_rpm=None,
    team_tpm=None,
    max_tokens=None,
    max_prompt_tokens=None,
    injection_policy=None,
    pii_policy=None,
    admin=False,  # the first key is made with `shipway keys create`, never over HTTP
    expires_at=None,
)

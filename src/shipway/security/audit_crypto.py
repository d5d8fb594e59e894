"""Encryption of the prompts and answers the audit log keeps (``audit.store_content``).

AES-256-GCM with a random 96-bit nonce per record. The associated data binds a ciphertext to
its record (kind, principal, request id, time), so it cannot be moved to another record and
still decrypt. Keys come from one environment variable, ``id:base64key[,id:base64key…]``:
the first encrypts, every one decrypts by the ``kid`` stored beside the ciphertext, so a key
is rotated by putting a new one first and dropping the old one once nothing needs it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shipway.errors import ConfigError

__all__ = ["ContentKeys", "associated_data"]

_KEY_BYTES = 32
_NONCE_BYTES = 12
_KID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
_GENERATE = (
    "python -c 'import base64, secrets; "
    'print("k1:" + base64.b64encode(secrets.token_bytes(32)).decode())\''
)


def associated_data(
    kind: str, principal: str | None, request_id: str | None, at: datetime
) -> bytes:
    """What a record's ciphertext is bound to: its kind, principal, request id and time."""
    stamp = at.astimezone(UTC).isoformat(timespec="microseconds")
    return json.dumps([kind, principal, request_id, stamp], separators=(",", ":")).encode()


class ContentKeys:
    """The content keys by id; ``encrypt`` uses the first."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self.current = next(iter(keys))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], env_name: str) -> ContentKeys:
        """Parse ``environ[env_name]``; ``ConfigError`` says what is wrong and how to fix it."""
        value = environ.get(env_name, "").strip()
        if not value:
            raise ConfigError(
                f"{env_name} is not set: audit.store_content encrypts prompts and answers "
                f"and needs a 32-byte key as id:base64key; generate one with `{_GENERATE}`"
            )
        keys: dict[str, bytes] = {}
        for position, item in enumerate(value.split(","), start=1):
            kid, sep, encoded = item.strip().partition(":")
            if not sep or not _KID.match(kid):
                raise ConfigError(
                    f"{env_name}: entry {position} must be id:base64key, the id being 1-32 "
                    "letters, digits, '.', '_' or '-'"
                )
            if kid in keys:
                raise ConfigError(f"{env_name}: key id {kid!r} appears twice")
            keys[kid] = _decode_key(env_name, kid, encoded.strip())
        return cls(keys)

    def encrypt(self, content: Mapping[str, Any], associated: bytes) -> dict[str, str]:
        """``content`` as JSON, sealed: {"kid", "nonce", "ct"} (base64); ``ValueError`` if
        it is not plain JSON data."""
        try:
            plain = orjson.dumps(content)
        except TypeError as exc:  # orjson.JSONEncodeError
            raise ValueError(f"content is not JSON data: {exc}") from exc
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self.current].encrypt(nonce, plain, associated)
        return {"kid": self.current, "nonce": _b64(nonce), "ct": _b64(sealed)}

    def decrypt(self, sealed: Mapping[str, Any], associated: bytes) -> Any:
        """The content ``encrypt`` sealed; ``ValueError`` for an unknown key, a wrong key,
        an altered ciphertext or a ciphertext taken from another record."""
        kid = sealed.get("kid")
        cipher = self._ciphers.get(kid) if isinstance(kid, str) else None
        if cipher is None:
            raise ValueError(f"sealed with key {kid!r}, which is not among the configured keys")
        try:
            nonce = base64.b64decode(sealed["nonce"], validate=True)
            plain = cipher.decrypt(nonce, base64.b64decode(sealed["ct"], validate=True), associated)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"not a sealed content record: {exc}") from exc
        except InvalidTag as exc:
            raise ValueError(
                f"content does not authenticate under key {kid!r}: the key is wrong, or the "
                "ciphertext was altered or belongs to another record"
            ) from exc
        return orjson.loads(plain)


def _decode_key(env_name: str, kid: str, encoded: str) -> bytes:
    # Standard or URL-safe base64, padded or not: whatever a generator printed.
    normal = encoded.replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(normal + "=" * (-len(normal) % 4), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != _KEY_BYTES:
        raise ConfigError(
            f"{env_name}: key {kid!r} must be {_KEY_BYTES} bytes in base64 (AES-256); "
            f"generate one with `{_GENERATE}`"
        )
    return key


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")

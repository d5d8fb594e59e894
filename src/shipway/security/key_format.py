"""What an API key looks like, how it is made, and how it is stored.

    sw-<43 base62 characters: 256 random bits><6 base62 characters: CRC-32 of the rest>

The checksum (as in GitHub's tokens) lets a malformed or made-up key be refused without a
database read, and lets secret scanners recognise a Shipway key. Keys are stored as an
HMAC-SHA256 under a server secret (the pepper): a key has 256 bits of entropy, so a slow
password hash would buy nothing and cost milliseconds on every request, and the pepper means
a copy of the database alone does not let anyone test a guessed key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

__all__ = ["KEY_PREFIX", "KeyHasher", "display_prefix", "generate_key", "well_formed"]

KEY_PREFIX = "sw-"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_CHARS = 43  # 62**43 > 2**256
_CHECK_CHARS = 6  # 62**6 > 2**32
KEY_LENGTH = len(KEY_PREFIX) + _BODY_CHARS + _CHECK_CHARS
_ALLOWED = frozenset(_ALPHABET)


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECK_CHARS)


def generate_key() -> str:
    body = _base62(secrets.randbits(256), _BODY_CHARS)
    return f"{KEY_PREFIX}{body}{_checksum(body)}"


def well_formed(key: str) -> bool:
    """Prefix, length, alphabet and checksum: cheap, and no database read."""
    if len(key) != KEY_LENGTH or not key.startswith(KEY_PREFIX):
        return False
    rest = key[len(KEY_PREFIX) :]
    if not _ALLOWED.issuperset(rest):
        return False
    body, check = rest[:_BODY_CHARS], rest[_BODY_CHARS:]
    return hmac.compare_digest(_checksum(body), check)


def display_prefix(key: str) -> str:
    """The part shown in listings and logs (``sw-AbC12345``): enough to tell keys apart."""
    return key[: len(KEY_PREFIX) + 8]


class KeyHasher:
    def __init__(self, pepper: bytes) -> None:
        self._pepper = pepper

    def hash(self, key: str) -> str:
        return hmac.new(self._pepper, key.encode("ascii"), hashlib.sha256).hexdigest()

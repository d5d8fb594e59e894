"""The error a local model runner raises inside its worker process.

It crosses the process boundary as ``{"kind", "message", "param"}``; the engine turns the
``kind`` back into the matching ``shipway.errors`` class on the gateway side.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["LocalErrorKind", "LocalModelError"]

LocalErrorKind = Literal["invalid_request", "context_length_exceeded", "internal"]


class LocalModelError(Exception):
    def __init__(self, kind: LocalErrorKind, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param

    def to_wire(self) -> dict[str, str | None]:
        return {"kind": self.kind, "message": self.message, "param": self.param}

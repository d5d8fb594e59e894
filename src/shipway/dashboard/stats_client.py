"""``shipway stats``'s one request: GET the dashboard's summary document from a server.

Every way it can fail becomes a ``SummaryUnavailable`` whose message is one line saying what
to do, for the CLI to print (it never reaches an HTTP client, so it is not a ShipwayError).
The standard library's client is enough for one GET every few seconds.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode, urlsplit

__all__ = ["SummaryUnavailable", "fetch_summary", "summary_url"]


class SummaryUnavailable(Exception):
    """The summary could not be read; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def summary_url(base_url: str, window_s: int) -> str:
    """``http://host:port`` (a trailing ``/`` or ``/v1`` is fine) → the summary's URL."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SummaryUnavailable(
            f"--url must be the server's http:// or https:// address, not {base_url!r} "
            "(e.g. http://127.0.0.1:8000)"
        )
    path = parts.path.rstrip("/").removesuffix("/v1")
    query = urlencode({"window": window_s})
    return f"{parts.scheme}://{parts.netloc}{path}/dashboard/api/summary?{query}"


def fetch_summary(base_url: str, key: str | None, window_s: int, timeout_s: float = 10) -> Any:
    url = summary_url(base_url, window_s)
    headers = {"Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise _refused(base_url, exc.code, _message(exc.read()), key is not None) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise SummaryUnavailable(
            f"cannot reach {base_url}: {reason}; is `shipway serve` running there?"
        ) from None
    try:
        return json.loads(body)
    except ValueError:
        raise SummaryUnavailable(
            f"{base_url} answered something that is not Shipway's summary JSON; "
            "is --url a Shipway server?"
        ) from None


def _refused(base_url: str, status: int, message: str, sent_key: bool) -> SummaryUnavailable:
    if status == 401:
        hint = "the key was refused" if sent_key else "this server has API keys: pass an admin key"
        text = f"{hint} (401 {message}); use --key or SHIPWAY_API_KEY with an admin key"
    elif status == 403:
        text = f"refused (403 {message}); `shipway stats` needs an admin key"
    elif status == 404:
        text = f"{base_url} has no dashboard (404): is dashboard.enabled off, or not Shipway?"
    else:
        text = f"{base_url} answered {status}: {message}"
    return SummaryUnavailable(text, status)


def _message(body: bytes) -> str:
    """The OpenAI error envelope's message, else the start of the body."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace").strip() or "no message"

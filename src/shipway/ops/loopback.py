"""Keep the chaos tools pointed at this machine unless the user says otherwise.

A fault injector or a load generator aimed at someone else's server by a typo is an attack,
so both refuse a URL whose host resolves to anything but loopback without ``--allow-remote``.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

__all__ = ["TargetRefused", "check_target"]


class TargetRefused(ValueError):
    """The URL is malformed, does not resolve, or is remote without ``--allow-remote``."""


def check_target(url: str, *, allow_remote: bool, flag: str = "--allow-remote") -> str:
    """The URL without a trailing slash, once it is an http(s) URL whose host resolves only to
    loopback addresses (any host, if ``allow_remote``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused(f"{url!r} is not an http:// or https:// URL with a host")
    if allow_remote:
        return url.rstrip("/")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError) as exc:
        raise TargetRefused(f"cannot resolve {parts.hostname!r} in {url!r}: {exc}") from None
    # Every address must be loopback: a name that also resolves elsewhere may be dialled there.
    remote = sorted(
        {
            str(info[4][0])
            for info in infos
            if not ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
        }
    )
    if remote:
        raise TargetRefused(
            f"{url!r} is not on this machine ({parts.hostname} is {', '.join(remote)}); "
            f"the chaos tools talk to loopback only unless you pass {flag}"
        )
    return url.rstrip("/")

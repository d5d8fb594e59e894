"""``/dashboard``: a static page (public, holds no data) and the JSON it polls (operators).

    GET /dashboard                        the page; its assets beside it (fixed names only)
    GET /dashboard/api/summary?window=S   summary.py's document over the last S seconds

How an operator with a key gets in: a browser cannot put a Bearer header on a page
navigation, so the page itself carries nothing worth protecting and the data route is
``Access.OPERATOR`` (open while no key exists, then an admin key). When the data route
answers 401 or 403 the page asks for a key once, keeps it in ``sessionStorage`` (gone with
the tab, never in a cookie, so no CSRF surface and no server-side session) and sends it as
``Authorization: Bearer`` on each poll. The page polls every 2 s: plain requests that any
proxy passes and that recover by themselves after a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from importlib import resources

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipway.api.access import Access, Endpoint, RouteAccess
from shipway.dashboard.buckets import MAX_POINTS, BucketCache, step_for
from shipway.dashboard.summary import FiringAlerts, build_summary
from shipway.engine.engine import Engine
from shipway.errors import InvalidRequest
from shipway.telemetry.recent import RecentStats

__all__ = ["DashboardRoutes"]

# URL path under /dashboard → (file under static/, media type). A fixed table rather than a
# static-files mount: nothing else in the package can be asked for by name.
_ASSETS = {
    "": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
    "/vendor/uplot/uPlot.iife.min.js": (
        "vendor/uplot/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
    ),
    "/vendor/uplot/uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
}

_SECURITY_HEADERS = {
    # Scripts and styles from this origin only (no inline code), data from this origin only.
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}

_MIN_WINDOW_S = 10


class DashboardRoutes:
    def __init__(
        self,
        recent: RecentStats,
        engine: Engine,
        access: RouteAccess,
        *,
        currency: str,
        alerts: FiringAlerts | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.recent = recent
        self.engine = engine
        self.access = access
        self.currency = currency
        self.alerts = alerts
        self._clock = clock
        self._buckets = BucketCache()
        static = resources.files("shipway.dashboard") / "static"
        self._assets = {
            path: (static.joinpath(name).read_bytes(), media_type)
            for path, (name, media_type) in _ASSETS.items()
        }

    def routes(self) -> list[Route]:
        pages = [
            Route(f"/dashboard{path}", self._asset_endpoint(path), methods=["GET"])
            for path in self._assets
        ]
        summary = self.access.protect(self.summary, Access.OPERATOR)
        return [*pages, Route("/dashboard/api/summary", summary, methods=["GET"])]

    def _asset_endpoint(self, path: str) -> Endpoint:
        body, media_type = self._assets[path]
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        headers = {**_SECURITY_HEADERS, "cache-control": "no-cache", "etag": etag}

        async def asset(request: Request) -> Response:
            if request.headers.get("if-none-match") == etag:
                return Response(status_code=304, headers=headers)
            return Response(body, media_type=media_type, headers=headers)

        asset.__name__ = f"dashboard_asset{path.replace('/', '_').replace('.', '_')}"
        return asset

    async def summary(self, request: Request) -> Response:
        window_s = self._window(request.query_params.get("window"))
        now = self._clock()
        end_s = int(now)
        step = step_for(window_s)
        seconds, start_s = self.recent.seconds(window_s + 1), end_s - window_s
        for _ in range(MAX_POINTS):  # bounded, whatever another poll does meanwhile
            if not self._buckets.fill(seconds, start_s=start_s, end_s=end_s, step=step):
                break
            await asyncio.sleep(0)  # a long window read for the first time: let requests run
        buckets = self._buckets.buckets(seconds, start_s=start_s, end_s=end_s, step=step)
        document = build_summary(
            buckets,
            now=now,
            window_s=window_s,
            step=step,
            engine_status=self.engine.status(),
            gauges=self.recent.latest_gauges(),
            alerts=self.alerts.firing() if self.alerts is not None else [],
            currency=self.currency,
            history_s=self.recent.history_s,
        )
        return Response(
            orjson.dumps(document),
            media_type="application/json",
            headers={**_SECURITY_HEADERS, "cache-control": "no-store"},
        )

    def _window(self, raw: str | None) -> int:
        """Whole seconds, at least 10; more than ``history_s`` is cut to it (everything kept)."""
        if raw is None:
            raw = "300"
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 12) or int(raw) < _MIN_WINDOW_S:
            raise InvalidRequest(
                f"window must be whole seconds, at least {_MIN_WINDOW_S}", param="window"
            )
        return min(int(raw), self.recent.history_s)

"""Who may call which route: decided on the route Starlette dispatched, nothing else.

Each route is registered with its ``Access``; ``RouteAccess.protect`` wraps its endpoint so
the check runs after routing, on the endpoint actually chosen. ``Host``, ``X-Forwarded-*`` and
the raw path never enter the decision. The principal is left in ``scope["state"]`` for the
route (it goes on the ``Call``) and for the access and audit logs.

    PUBLIC    /healthz, /readyz                   never a key
    METRICS   /metrics                            admin key, or none if auth.public_metrics
    USER      /v1/*                               any valid key
    ADMIN     /admin/*                            an admin key
    OPERATOR  /dashboard/api/*                    an admin key once any key exists

With no key made yet and the server allowed to be open (loopback, or ``--insecure``), USER,
METRICS and OPERATOR routes serve the anonymous principal and ADMIN routes are refused: the
first key is made with ``shipway keys create``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import Enum

from starlette.requests import Request
from starlette.responses import Response

from shipway.errors import PermissionDenied, Unauthorized
from shipway.security.key_service import KeyService
from shipway.security.principal import ANONYMOUS, Principal

__all__ = ["Access", "Endpoint", "RouteAccess"]

Endpoint = Callable[[Request], Awaitable[Response]]


class Access(Enum):
    PUBLIC = "public"
    METRICS = "metrics"
    USER = "user"
    ADMIN = "admin"
    # Reads operators need (the dashboard's data) and that an open server shows to anyone,
    # as it does /metrics: unlike ADMIN, nothing here changes state.
    OPERATOR = "operator"


class RouteAccess:
    def __init__(self, keys: KeyService, *, public_metrics: bool) -> None:
        self.keys = keys
        self.public_metrics = public_metrics

    def protect(self, endpoint: Endpoint, access: Access) -> Endpoint:
        if access is Access.PUBLIC or (access is Access.METRICS and self.public_metrics):
            return endpoint

        async def protected(request: Request) -> Response:
            state = request.scope["state"]
            trace = state.get("trace")
            if trace is None or not trace.recording:
                state["principal"] = await self.principal(request, access)
            else:
                with trace.stage("auth", {"shipway.access": access.value}):
                    state["principal"] = await self.principal(request, access)
            return await endpoint(request)

        protected.__name__ = getattr(endpoint, "__name__", "endpoint")
        return protected

    async def is_admin_or_open(self, request: Request) -> bool:
        """For public routes that show more to operators: no key exists yet, or the caller
        sent a valid admin key. Never raises: a bad key just sees the public view."""
        if not await self.keys.keys_exist():
            return True
        header = request.headers.get("authorization")
        if not header:
            return False
        try:
            principal = await self.keys.authenticate(header)
        except Unauthorized:
            return False
        return principal.admin

    async def principal(self, request: Request, access: Access) -> Principal:
        if not await self.keys.keys_exist():
            if access is Access.ADMIN:
                raise PermissionDenied(
                    "no API key exists yet: make the first admin key with "
                    "`shipway keys create --name NAME --admin`"
                )
            return ANONYMOUS
        header = request.headers.get("authorization")
        principal = await self.keys.authenticate(header)
        # Named in the access and audit logs even when refused below.
        request.scope["state"]["principal"] = principal
        if access is not Access.USER and not principal.admin:
            raise PermissionDenied(f"{request.url.path} needs an admin key")
        return principal

"""``/admin/keys``: the CLI's key commands over HTTP, for admin keys only.

    GET  /admin/keys                    the keys the caller may manage (never a key or hash)
    POST /admin/keys                    make a key; the response holds it, once
    POST /admin/keys/{id}/revoke        stop a key (within auth.key_cache_s on every replica)
    POST /admin/keys/{id}/rotate        a new key with the same rights; {"grace_s": 60} keeps
                                        the old one working that long
    GET  /admin/costs?by=team&since=7d  spend per team, key, model, tag or user (``until``
                                        optional); a team's admin key sees its team only

Every call is checked by ``RouteAccess`` (admin keys only) and by the key service's scope
rules (no key can make a key with more rights than its own), and each change is audited.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipway.api.access import Access, RouteAccess
from shipway.api.http_input import read_json
from shipway.api.schemas import parse_body
from shipway.costs.report import build_report, parse_dimension, parse_when
from shipway.errors import InvalidRequest
from shipway.security.audit import AuditLog
from shipway.security.key_service import KeyService, KeySpec, key_view, parse_models
from shipway.security.principal import Principal
from shipway.store.keys import KeyRecord
from shipway.store.spend import SpendStore

__all__ = ["AdminRoutes"]

_Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
_Positive = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Guards(_Strict):
    injection: Literal["block", "flag", "off"] | None = None
    pii: Literal["redact", "block", "off"] | None = None


class CreateKeyBody(_Strict):
    name: _Name
    team: _Name | None = None
    models: Annotated[list[_Name], Field(min_length=1, max_length=1000)] | None = None
    rpm: _Positive | None = None
    tpm: _Positive | None = None
    max_tokens: _Positive | None = None
    max_prompt_tokens: _Positive | None = None
    guards: _Guards | None = None
    expires_in_s: Annotated[float, Field(gt=0, le=10 * 365 * 86400)] | None = None
    admin: bool = False


class RotateKeyBody(_Strict):
    grace_s: Annotated[float, Field(ge=0, le=30 * 86400)] = 0.0


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


class AdminRoutes:
    def __init__(
        self,
        keys: KeyService,
        access: RouteAccess,
        audit: AuditLog,
        spend: SpendStore | None = None,
        currency: str = "USD",
    ) -> None:
        self.keys = keys
        self.access = access
        self.audit = audit
        self.spend = spend
        self.currency = currency

    def routes(self) -> list[Route]:
        protect = self.access.protect
        costs = (
            []
            if self.spend is None
            else [Route("/admin/costs", protect(self.costs, Access.ADMIN), methods=["GET"])]
        )
        return [
            *costs,
            # One route for both methods, so a 405 there lists both in `Allow`.
            Route("/admin/keys", protect(self.keys_root, Access.ADMIN), methods=["GET", "POST"]),
            Route(
                "/admin/keys/{key_id:int}/revoke",
                protect(self.revoke_key, Access.ADMIN),
                methods=["POST"],
            ),
            Route(
                "/admin/keys/{key_id:int}/rotate",
                protect(self.rotate_key, Access.ADMIN),
                methods=["POST"],
            ),
        ]

    async def keys_root(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.create_key(request)
        return await self.list_keys(request)

    async def list_keys(self, request: Request) -> Response:
        records = await self.keys.list(actor=_actor(request))
        return _json({"object": "list", "data": [key_view(key) for key in records]})

    async def create_key(self, request: Request) -> Response:
        body = parse_body(CreateKeyBody, await read_json(request))
        expires = None
        if body.expires_in_s is not None:
            expires = datetime.now(UTC) + timedelta(seconds=body.expires_in_s)
        spec = KeySpec(
            name=body.name,
            team=body.team,
            models=parse_models(body.models),
            rpm=body.rpm,
            tpm=body.tpm,
            max_tokens=body.max_tokens,
            max_prompt_tokens=body.max_prompt_tokens,
            guards=None if body.guards is None else body.guards.model_dump(exclude_none=True),
            expires_at=expires,
            admin=body.admin,
        )
        actor = _actor(request)
        secret, record = await self.keys.create(spec, actor=actor)
        self._audit(request, actor, "admin.key.create", record)
        return _json({**key_view(record), "key": secret}, status=201)

    async def revoke_key(self, request: Request) -> Response:
        actor = _actor(request)
        record = await self.keys.revoke(request.path_params["key_id"], actor=actor)
        self._audit(request, actor, "admin.key.revoke", record)
        return _json(key_view(record))

    async def rotate_key(self, request: Request) -> Response:
        raw = await read_json(request) if await request.body() else {}
        body = parse_body(RotateKeyBody, raw)
        actor = _actor(request)
        secret, new, old = await self.keys.rotate(
            request.path_params["key_id"], actor=actor, grace_s=body.grace_s
        )
        self._audit(request, actor, "admin.key.rotate", new, replaced=old.id)
        return _json({**key_view(new), "key": secret, "replaces": key_view(old)}, status=201)

    async def costs(self, request: Request) -> Response:
        assert self.spend is not None  # routed only with a store
        query = request.query_params
        now = datetime.now(UTC)
        try:
            by = parse_dimension(query.get("by", "team"), name="by")
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="by") from None
        since = _when(query.get("since", "7d"), now, "since")
        until = None if query.get("until") is None else _when(query["until"], now, "until")
        if until is not None and until <= since:
            raise InvalidRequest("until must be after since", param="until")
        # A team's admin manages its team's keys only; it sees its team's spend only.
        report = await build_report(self.spend, by, since, until, team=_actor(request).team)
        return _json(report.to_json(self.currency))

    def _audit(
        self, request: Request, actor: Principal, kind: str, key: KeyRecord, **extra: Any
    ) -> None:
        self.audit.record(
            kind,
            principal=actor.label,
            request_id=request.scope["state"].get("request_id"),
            data={"key": key_view(key), **extra},
        )


def _when(value: str, now: datetime, param: str) -> datetime:
    try:
        return parse_when(value, now, name=param)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=param) from None


def _actor(request: Request) -> Principal:
    principal = request.scope["state"].get("principal")
    if not isinstance(principal, Principal):  # RouteAccess.protect always sets it
        raise InvalidRequest("no principal")
    return principal

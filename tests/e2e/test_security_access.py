"""Who may call what, against a real `shipway serve` with keys made while it runs.

One server with two upstream models behind the fake upstream (no model to load) and keys
made by the CLI and the admin API: a route x principal matrix with the exact status of
every cell, hostile `Authorization` values, crafted `Host` / `X-Forwarded-*` / rewrite
headers and paths, keys trying to widen their own or another's rights, revocation and
rotation from the CLI while the server runs, and the audit log verified and then tampered
with. Separate short-lived servers cover open mode (no key yet) and `--host 0.0.0.0`.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import yaml
from tests.support.keys import bearer, create_key, shipway_cli, wait_until
from tests.support.raw_http import connect, read_until_closed, status_of
from tests.support.servers import Server, free_port, shipway_server

from shipway.security.key_format import generate_key

PRINCIPALS = ("none", "user_a", "user_b", "revoked", "expired", "admin")
# auth.key_cache_s (1 s) plus polling and a loaded machine's slack.
APPLIES_WITHIN_S = 1.5


class Keys(NamedTuple):
    by_principal: dict[str, str | None]
    ids: dict[str, int]
    team_ids: dict[str, int]


def _upstream_models(upstream: Server) -> dict[str, Any]:
    base = upstream.base + "/v1"
    echo = {"backend": "openai", "base_url": base, "upstream_model": "echo"}
    return {"embedded_models": False, "models": {"m": echo, "m2": dict(echo)}}


@pytest.fixture(scope="module")
def gateway(upstream: Server) -> Iterator[Server]:
    srv = shipway_server(_upstream_models(upstream))
    yield srv
    srv.stop()


def _admin_create(
    http: httpx.Client, gateway: Server, maker: str, **body: Any
) -> tuple[str, dict[str, Any]]:
    """POST /admin/keys as ``maker``: (the new key, its record)."""
    response = http.post(gateway.base + "/admin/keys", headers=bearer(maker), json=body)
    assert response.status_code == 201, response.text
    made = response.json()
    return made.pop("key"), made


@pytest.fixture(scope="module")
def keys(gateway: Server, http: httpx.Client) -> Keys:
    """Made after the server started: the admin, team A's user and a key to revoke by the CLI,
    the others by the admin API (an expiring one among them)."""
    admin = create_key(gateway, "root", "--admin")
    user_a = create_key(gateway, "user-a", "--team", "A", "--models", "m")
    revoked = create_key(gateway, "to-revoke")
    result = shipway_cli(gateway, "keys", "revoke", str(revoked.id))
    assert result.returncode == 0, result.stderr
    user_b, b_view = _admin_create(http, gateway, admin.key, name="user-b", team="B")
    expired, _ = _admin_create(http, gateway, admin.key, name="short", expires_in_s=1.0)
    victims = {
        name: _admin_create(http, gateway, admin.key, name=name)[1]["id"]
        for name in ("victim-revoke", "victim-rotate")
    }
    listing = http.get(gateway.base + "/admin/keys", headers=bearer(admin.key)).json()["data"]
    team_a = next(k["team_id"] for k in listing if k["id"] == user_a.id)

    def expired_refused() -> bool:
        return http.get(gateway.base + "/v1/models", headers=bearer(expired)).status_code == 401

    wait_until(expired_refused, 5)
    return Keys(
        {
            "none": None,
            "user_a": user_a.key,
            "user_b": user_b,
            "revoked": revoked.key,
            "expired": expired,
            "admin": admin.key,
        },
        {"admin": admin.id, "user_a": user_a.id, "user_b": b_view["id"], **victims},
        {"A": team_a, "B": b_view["team_id"]},
    )


def _chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


# (method, path, body) → status for none, user_a, user_b, revoked, expired, admin.
# user_a: team A, model m only; user_b: team B, every model. {victim-*}: keys the admin
# revokes and rotates (the only principal allowed to).
MATRIX: list[tuple[str, str, dict[str, Any] | None, tuple[int, ...]]] = [
    ("GET", "/v1/models", None, (401, 200, 200, 401, 401, 200)),
    ("GET", "/v1/models/m", None, (401, 200, 200, 401, 401, 200)),
    ("GET", "/v1/models/m2", None, (401, 404, 200, 401, 401, 200)),
    ("POST", "/v1/chat/completions", _chat("m"), (401, 200, 200, 401, 401, 200)),
    ("POST", "/v1/chat/completions", _chat("m2"), (401, 403, 200, 401, 401, 200)),
    ("POST", "/v1/embeddings", {"model": "m", "input": "hi"}, (401, 200, 200, 401, 401, 200)),
    ("POST", "/v1/embeddings", {"model": "m2", "input": "hi"}, (401, 403, 200, 401, 401, 200)),
    ("GET", "/metrics", None, (401, 403, 403, 401, 401, 200)),
    ("GET", "/admin/keys", None, (401, 403, 403, 401, 401, 200)),
    ("POST", "/admin/keys", {"name": "matrix", "models": ["m"]}, (401, 403, 403, 401, 401, 201)),
    ("POST", "/admin/keys/{victim-revoke}/revoke", None, (401, 403, 403, 401, 401, 200)),
    ("POST", "/admin/keys/{victim-rotate}/rotate", {}, (401, 403, 403, 401, 401, 201)),
    ("GET", "/healthz", None, (200, 200, 200, 200, 200, 200)),
    ("GET", "/readyz", None, (200, 200, 200, 200, 200, 200)),
    ("GET", "/no/such/route", None, (404, 404, 404, 404, 404, 404)),
    ("GET", "/admin/no-such-route", None, (404, 404, 404, 404, 404, 404)),
    ("DELETE", "/admin/keys", None, (405, 405, 405, 405, 405, 405)),
    ("POST", "/v1/models", {}, (405, 405, 405, 405, 405, 405)),
    ("OPTIONS", "/admin/keys", None, (405, 405, 405, 405, 405, 405)),
]


def _call(
    http: httpx.Client,
    gateway: Server,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    key: str | None,
    ids: dict[str, int],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    path = re.sub(r"\{([a-z-]+)\}", lambda m: str(ids[m.group(1)]), path)
    sent = {**(bearer(key) if key else {}), **(headers or {})}
    return http.request(method, gateway.base + path, json=body, headers=sent)


def test_route_principal_matrix(gateway: Server, http: httpx.Client, keys: Keys) -> None:
    got: dict[tuple[str, str], int] = {}
    wrong: list[str] = []
    for method, path, body, expected in MATRIX:
        for principal, want in zip(PRINCIPALS, expected, strict=True):
            key = keys.by_principal[principal]
            response = _call(http, gateway, method, path, body, key, keys.ids)
            got[(f"{method} {path} {body}", principal)] = response.status_code
            if response.status_code != want:
                wrong.append(
                    f"{method} {path} as {principal}: {response.status_code}, expected {want}: "
                    f"{response.text[:200]}"
                )
            if response.status_code == 401:
                error = response.json()["error"]
                assert error["code"] == "invalid_api_key", response.text
                assert error["type"] == "invalid_request_error"
            elif response.status_code == 403:
                assert response.json()["error"]["type"] == "permission_error", response.text
    assert not wrong, "\n".join(wrong)
    allowed = {cell for cell, status in got.items() if 200 <= status < 300}
    expected_2xx = {
        (f"{method} {path} {body}", principal)
        for method, path, body, codes in MATRIX
        for principal, code in zip(PRINCIPALS, codes, strict=True)
        if 200 <= code < 300
    }
    assert allowed == expected_2xx


def test_head_is_decided_like_get(gateway: Server, http: httpx.Client, keys: Keys) -> None:
    wrong = []
    for method, path, _body, expected in MATRIX:
        if method != "GET":
            continue
        for principal, want in zip(PRINCIPALS, expected, strict=True):
            key = keys.by_principal[principal]
            response = _call(http, gateway, "HEAD", path, None, key, keys.ids)
            if response.status_code != want:
                wrong.append(f"HEAD {path} as {principal}: {response.status_code}, not {want}")
    assert not wrong, "\n".join(wrong)


def test_refusals_do_not_say_whether_a_key_exists(
    gateway: Server, http: httpx.Client, keys: Keys
) -> None:
    """Unknown, revoked and expired keys get the same answer: no oracle for key states."""
    bodies = set()
    for key in (keys.by_principal["revoked"], keys.by_principal["expired"], generate_key()):
        response = http.get(gateway.base + "/v1/models", headers=bearer(str(key)))
        assert response.status_code == 401
        bodies.add(response.text)
    assert len(bodies) == 1, bodies


def _flip(key: str, at: int = 12) -> str:
    replacement = "a" if key[at] != "a" else "b"
    return key[:at] + replacement + key[at + 1 :]


AUTHORIZATION_VALUES = {
    "sql": lambda key: "Bearer ' OR '1'='1",
    "sql-in-key-shape": lambda key: "Bearer sw-' OR 1=1; DROP TABLE api_keys; --",
    "10 kB": lambda key: "Bearer " + "A" * 10_240,
    "10 kB after a valid key": lambda key: f"Bearer {key}" + "A" * 10_240,
    "basic": lambda key: "Basic dXNlcjpwYXNzd29yZA==",
    "basic with the key": lambda key: f"Basic {key}",
    "token scheme": lambda key: f"Token {key}",
    "no scheme": lambda key: key,
    "scheme only": lambda key: "Bearer",
    "tab instead of space": lambda key: f"Bearer\t{key}",
    "lowercase scheme, bogus key": lambda key: "bearer sw-not-a-key",
    "flipped character": lambda key: f"Bearer {_flip(key)}",
    "well-formed, never issued": lambda key: f"Bearer {generate_key()}",
    "truncated": lambda key: f"Bearer {key[:-1]}",
    "two keys": lambda key: f"Bearer {key}, Bearer {key}",
    "key in quotes": lambda key: f'Bearer "{key}"',
}


@pytest.mark.parametrize("name", list(AUTHORIZATION_VALUES))
def test_hostile_authorization_values_get_401(
    gateway: Server, http: httpx.Client, keys: Keys, name: str
) -> None:
    value = AUTHORIZATION_VALUES[name](str(keys.by_principal["admin"]))
    for path in ("/v1/models", "/admin/keys", "/metrics"):
        response = http.get(gateway.base + path, headers={"Authorization": value})
        assert response.status_code == 401, (path, response.text)
        body = response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] == "invalid_api_key"
    assert http.get(gateway.base + "/healthz").status_code == 200


def test_lowercase_bearer_with_a_valid_key_is_accepted(
    gateway: Server, http: httpx.Client, keys: Keys
) -> None:
    """The scheme is case-insensitive (RFC 9110 section 11.1), as OpenAI's API takes it."""
    key = str(keys.by_principal["user_a"])
    for scheme in ("bearer", "BEARER"):
        response = http.get(
            gateway.base + "/v1/models", headers={"Authorization": f"{scheme} {key}"}
        )
        assert response.status_code == 200
    response = http.get(gateway.base + "/admin/keys", headers={"Authorization": f"bearer {key}"})
    assert response.status_code == 403  # still only the rights of the key


def _raw_get(gateway: Server, target: bytes, headers: bytes) -> int:
    sock = connect(gateway.port)
    try:
        sock.sendall(
            b"GET "
            + target
            + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + headers
            + b"Connection: close\r\n\r\n"
        )
        response, _, _ = read_until_closed(sock, 10)
    finally:
        sock.close()
    return status_of(response)


def test_non_ascii_authorization_bytes_get_401(gateway: Server, keys: Keys) -> None:
    key = str(keys.by_principal["admin"]).encode()
    values = [
        b"Bearer \xff\xfe\xfd",
        b"Bearer sw-\xc3\xa9\xc3\xa9\xc3\xa9",
        b"Bearer " + key[:-2] + "é".encode(),  # a valid key with its last char made UTF-8
        b"Bearer " + key[:20] + b"\x80" + key[21:],
        b"\xc2\xa0Bearer " + key,  # a no-break space in front
        "Bearer ключ".encode(),
        b"Bearer    ",  # h11 will not send trailing spaces
    ]
    for value in values:
        assert _raw_get(gateway, b"/v1/models", b"Authorization: " + value + b"\r\n") == 401
        assert _raw_get(gateway, b"/admin/keys", b"Authorization: " + value + b"\r\n") == 401
    # Bytes HTTP forbids in a field value are refused by the parser itself, before any route.
    for value in (b"Bearer " + key + b"\x00", b"Bearer \x7f" + key):
        assert _raw_get(gateway, b"/admin/keys", b"Authorization: " + value + b"\r\n") == 400
    assert _raw_get(gateway, b"/v1/models", b"Authorization: Bearer " + key + b"\r\n") == 200


CRAFTED_HEADERS: list[dict[str, str]] = [
    {"Host": "localhost"},
    {"Host": "admin.internal"},
    {"Host": "127.0.0.1/admin/keys"},
    {"Host": "[::1"},
    {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "Forwarded": "for=127.0.0.1"},
    {"X-Forwarded-Host": "admin.internal", "X-Forwarded-Proto": "https"},
    {"X-Forwarded-Prefix": "/admin", "X-Forwarded-Path": "/admin/keys"},
    {"X-Original-URL": "/healthz", "X-Rewrite-URL": "/healthz"},
    {"X-Original-URL": "/admin/keys", "X-Rewrite-URL": "/admin/keys"},
    {"X-HTTP-Method-Override": "GET", "X-Method-Override": "GET"},
    {"X-Forwarded-User": "root", "X-Remote-User": "admin", "X-Shipway-Principal": "key:1"},
]


@pytest.mark.parametrize("headers", CRAFTED_HEADERS, ids=lambda h: ",".join(h))
def test_crafted_proxy_headers_do_not_change_decisions(
    gateway: Server, http: httpx.Client, keys: Keys, headers: dict[str, str]
) -> None:
    read_only = [row for row in MATRIX if row[0] == "GET"]
    wrong = []
    for method, path, body, expected in read_only:
        for principal, want in zip(PRINCIPALS, expected, strict=True):
            key = keys.by_principal[principal]
            response = _call(http, gateway, method, path, body, key, keys.ids, headers)
            if response.status_code != want:
                wrong.append(f"{path} as {principal}: {response.status_code}, expected {want}")
    assert not wrong, "\n".join(wrong)


# (request target, status without a key, status with user_a's key). The router matches the
# decoded path exactly: a variant either is the admin route, and is decided as one, or is no
# route at all (404). Trailing-slash redirects are off: their Location would be built from
# the client's Host header.
PATH_TRICKS = [
    (b"/admin/keys/", 404, 404),
    (b"/metrics/", 404, 404),
    (b"//admin/keys", 404, 404),
    (b"/admin//keys", 404, 404),
    (b"/v1/../admin/keys", 404, 404),
    (b"/healthz/../admin/keys", 404, 404),
    (b"/admin/./keys", 404, 404),
    (b"/ADMIN/keys", 404, 404),
    (b"/admin/keys%00", 404, 404),
    (b"/admin/keys;/healthz", 404, 404),
    (b"/admin%2Fkeys", 401, 403),
    (b"/%61dmin/keys", 401, 403),
    (b"/admin/keys#/healthz", 401, 403),
    (b"/admin/keys?/healthz", 401, 403),
    (b"http://127.0.0.1/admin/keys", 401, 403),
]


@pytest.mark.parametrize(("target", "anonymous", "user"), PATH_TRICKS)
def test_path_tricks_never_reach_admin_routes(
    gateway: Server, keys: Keys, target: bytes, anonymous: int, user: int
) -> None:
    key = str(keys.by_principal["user_a"]).encode()
    assert _raw_get(gateway, target, b"") == anonymous
    assert _raw_get(gateway, target, b"Authorization: Bearer " + key + b"\r\n") == user


def test_a_user_key_cannot_use_or_change_admin_routes(
    gateway: Server, http: httpx.Client, keys: Keys
) -> None:
    user = str(keys.by_principal["user_a"])
    own = keys.ids["user_a"]
    base = gateway.base
    assert (
        http.post(base + "/admin/keys", headers=bearer(user), json={"name": "x"}).status_code == 403
    )
    assert (
        http.post(
            base + "/admin/keys", headers=bearer(user), json={"name": "y", "admin": True}
        ).status_code
        == 403
    )
    assert (
        http.post(f"{base}/admin/keys/{own}/rotate", headers=bearer(user), json={}).status_code
        == 403
    )
    assert http.post(f"{base}/admin/keys/{own}/revoke", headers=bearer(user)).status_code == 403
    # There is no route to change a key's rights: a key keeps what it was made with.
    change = {"models": None, "admin": True, "rpm": None, "team": None}
    for key in (user, str(keys.by_principal["admin"])):
        for method in ("PATCH", "PUT", "DELETE"):
            response = http.request(
                method, f"{base}/admin/keys/{own}", headers=bearer(key), json=change
            )
            assert response.status_code == 404, response.text
        for method in ("PATCH", "PUT"):
            response = http.request(method, f"{base}/admin/keys", headers=bearer(key), json=change)
            assert response.status_code == 405
    assert http.get(base + "/v1/models/m2", headers=bearer(user)).status_code == 404
    assert http.get(base + "/admin/keys", headers=bearer(user)).status_code == 403
    listing = http.get(base + "/admin/keys", headers=bearer(str(keys.by_principal["admin"])))
    mine = next(k for k in listing.json()["data"] if k["id"] == own)
    assert mine["models"] == ["m"] and mine["admin"] is False and mine["revoked_at"] is None


def test_405_on_admin_keys_lists_every_allowed_method(
    gateway: Server, http: httpx.Client, keys: Keys
) -> None:
    headers = bearer(str(keys.by_principal["admin"]))
    response = http.request("PUT", gateway.base + "/admin/keys", headers=headers, json={})
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) >= {"GET", "POST"}


def test_a_team_admin_cannot_widen_rights_or_touch_another_team(
    gateway: Server, http: httpx.Client, keys: Keys
) -> None:
    root = str(keys.by_principal["admin"])
    team_admin, view = _admin_create(
        http, gateway, root, name="a-admin", team="A", models=["m"], rpm=10, admin=True
    )
    assert view["team_id"] == keys.team_ids["A"]
    wider = {
        "models": {"models": ["m", "m2"]},
        "rpm": {"rpm": 11},
        "team": {"team": "B"},
        "guards.injection": {"guards": {"injection": "off"}},
        "guards.pii": {"guards": {"pii": "off"}},
    }
    for right, extra in wider.items():
        response = http.post(
            gateway.base + "/admin/keys", headers=bearer(team_admin), json={"name": "w", **extra}
        )
        assert response.status_code == 403, (right, response.text)
        assert right in response.json()["error"]["message"]
    # Unset rights are inherited from the maker, not left open.
    _, narrow = _admin_create(http, gateway, team_admin, name="narrow")
    assert (narrow["team_id"], narrow["models"], narrow["rpm"]) == (keys.team_ids["A"], ["m"], 10)
    # Another team's keys (and the team-less root key) do not exist for it.
    for victim in (keys.ids["user_b"], keys.ids["admin"]):
        for action in ("revoke", "rotate"):
            response = http.post(
                f"{gateway.base}/admin/keys/{victim}/{action}", headers=bearer(team_admin), json={}
            )
            assert response.status_code == 404, response.text
    listing = http.get(gateway.base + "/admin/keys", headers=bearer(team_admin)).json()["data"]
    assert listing and {k["team_id"] for k in listing} == {keys.team_ids["A"]}
    user_b = str(keys.by_principal["user_b"])
    assert http.get(gateway.base + "/v1/models/m2", headers=bearer(user_b)).status_code == 200
    assert http.get(gateway.base + "/admin/keys", headers=bearer(root)).status_code == 200


def test_a_scoped_admin_cannot_revoke_a_key_with_more_rights(
    gateway: Server, http: httpx.Client, keys: Keys
) -> None:
    root = str(keys.by_principal["admin"])
    scoped, _ = _admin_create(http, gateway, root, name="scoped-admin", models=["m"], admin=True)
    rotate = http.post(
        f"{gateway.base}/admin/keys/{keys.ids['admin']}/rotate", headers=bearer(scoped), json={}
    )
    assert rotate.status_code == 403, rotate.text
    # Revoking a broader key through a copy of it: a victim with the root key's rights.
    _, broad = _admin_create(http, gateway, root, name="broad-admin", admin=True)
    revoke = http.post(f"{gateway.base}/admin/keys/{broad['id']}/revoke", headers=bearer(scoped))
    assert revoke.status_code in (403, 404), revoke.text


def test_cli_revocation_and_rotation_apply_while_running(
    gateway: Server, http: httpx.Client, keys: Keys
) -> None:
    def status(key: str) -> int:
        return http.get(gateway.base + "/v1/models", headers=bearer(key)).status_code

    made = create_key(gateway, "revoke-me")
    assert status(made.key) == 200  # now cached as valid
    result = shipway_cli(gateway, "keys", "revoke", str(made.id))
    assert result.returncode == 0, result.stderr
    took = wait_until(lambda: status(made.key) == 401, APPLIES_WITHIN_S)
    assert took <= APPLIES_WITHIN_S

    old = create_key(gateway, "rotate-me")
    assert status(old.key) == 200
    result = shipway_cli(gateway, "keys", "rotate", str(old.id), "--grace", "2")
    assert result.returncode == 0, result.stderr
    new = result.stdout.strip()
    assert new.startswith("sw-") and new != old.key
    assert status(new) == 200
    assert status(old.key) == 200  # within its grace
    wait_until(lambda: status(old.key) == 401, 2 + APPLIES_WITHIN_S)
    assert status(new) == 200
    # Revoked over the admin API, on this server: at once, no cache delay.
    replaced = re.search(r"key (\d+) replaces key (\d+)", result.stderr)
    assert replaced is not None and int(replaced.group(2)) == old.id, result.stderr
    admin = str(keys.by_principal["admin"])
    response = http.post(
        f"{gateway.base}/admin/keys/{replaced.group(1)}/revoke", headers=bearer(admin)
    )
    assert response.status_code == 200, response.text
    assert status(new) == 401
    missing = shipway_cli(gateway, "keys", "revoke", "999999")
    assert missing.returncode == 1 and "999999" in missing.stderr


def _config_file(upstream: Server, tmp: Path) -> str:
    path = tmp / "shipway.yaml"
    path.write_text(yaml.safe_dump(_upstream_models(upstream)))
    return str(path)


def test_open_mode_until_the_first_key(upstream: Server, http: httpx.Client) -> None:
    server = shipway_server(_upstream_models(upstream))
    try:
        base = server.base
        assert "NO API KEYS" in server.log.read_text()
        assert http.get(base + "/v1/models").status_code == 200
        assert http.post(base + "/v1/chat/completions", json=_chat("m2")).status_code == 200
        assert http.get(base + "/metrics").status_code == 200
        refused = http.get(base + "/admin/keys")
        assert refused.status_code == 403
        assert "shipway keys create" in refused.json()["error"]["message"]
        assert (
            http.post(base + "/admin/keys", json={"name": "me", "admin": True}).status_code == 403
        )

        admin = create_key(server, "first", "--admin")
        took = wait_until(
            lambda: http.get(base + "/v1/models").status_code == 401, APPLIES_WITHIN_S
        )
        assert took <= APPLIES_WITHIN_S
        assert http.get(base + "/metrics").status_code == 401
        assert http.get(base + "/v1/models", headers=bearer(admin.key)).status_code == 200
        assert http.get(base + "/admin/keys", headers=bearer(admin.key)).status_code == 200
    finally:
        server.stop()


def test_requests_racing_the_first_key_check_are_refused(upstream: Server) -> None:
    server = shipway_server(_upstream_models(upstream))
    try:
        create_key(server, "first", "--admin")
        time.sleep(1.2)  # auth.key_cache_s: every replica must refuse from now on
        request = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        sockets = [connect(server.port) for _ in range(30)]
        try:
            for sock in sockets:  # all sent before the server reads any
                sock.sendall(request)
            statuses = [status_of(read_until_closed(sock, 10)[0]) for sock in sockets]
        finally:
            for sock in sockets:
                sock.close()
        assert statuses == [401] * 30, statuses
    finally:
        server.stop()


def _serve_argv(config: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shipway", "serve", "--config", config, *extra]


def test_all_interfaces_without_a_key_needs_insecure(
    upstream: Server, http: httpx.Client, tmp_path: Path
) -> None:
    config = _config_file(upstream, tmp_path)
    data = tmp_path / "data"
    env = {"SHIPWAY_DATA_DIR": str(data)}
    refused = subprocess.run(
        _serve_argv(config, "--host", "0.0.0.0", "--port", str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert refused.returncode == 2, refused.stderr
    assert "'0.0.0.0'" in refused.stderr and "--insecure" in refused.stderr
    assert "API key" in refused.stderr

    open_server = Server(
        _serve_argv(config, "--host", "0.0.0.0", "--port", "{port}", "--insecure"),
        "/readyz",
        env={"SHIPWAY_DATA_DIR": str(tmp_path / "open-data")},
    )
    try:
        assert http.get(open_server.base + "/v1/models").status_code == 200
        assert "NO API KEYS" in open_server.log.read_text()
    finally:
        open_server.stop()

    # Once a key exists, no --insecure is needed, and every protected route wants a key.
    made = subprocess.run(
        [sys.executable, "-m", "shipway", "keys", "create", "--name", "k", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    keyed = Server(_serve_argv(config, "--host", "0.0.0.0", "--port", "{port}"), "/readyz", env=env)
    try:
        assert http.get(keyed.base + "/v1/models").status_code == 401
        assert (
            http.get(keyed.base + "/v1/models", headers=bearer(made.stdout.strip())).status_code
            == 200
        )
    finally:
        keyed.stop()


def test_a_refused_admin_attempt_names_the_key_in_the_logs(
    gateway: Server, http: httpx.Client, keys: Keys
) -> None:
    response = http.get(
        gateway.base + "/admin/keys", headers=bearer(str(keys.by_principal["user_a"]))
    )
    assert response.status_code == 403
    request_id = response.headers["x-request-id"]
    who = f"key:{keys.ids['user_a']}"

    wait_until(lambda: request_id in gateway.log.read_text(), 3)
    wait_until(lambda: bool(_audit_request(gateway, request_id)), 3)
    assert _audit_request(gateway, request_id) == [who]
    line = next(ln for ln in gateway.log.read_text().splitlines() if request_id in ln)
    assert json.loads(line).get("principal") == who, line


def _audit_request(server: Server, request_id: str) -> list[str | None]:
    assert server.data_dir is not None
    with closing(sqlite3.connect(server.data_dir / "shipway.db", timeout=10)) as db:
        query = "SELECT principal FROM audit_log WHERE request_id = ?"
        return [row[0] for row in db.execute(query, (request_id,))]


def _audit_rows(server: Server) -> list[tuple[int, str, str | None, str]]:
    assert server.data_dir is not None
    with closing(sqlite3.connect(server.data_dir / "shipway.db", timeout=10)) as db:
        return list(db.execute("SELECT seq, kind, principal, data FROM audit_log ORDER BY seq"))


def test_audit_log_verifies_then_catches_an_edit(gateway: Server, keys: Keys) -> None:
    """Last in the module: it tampers with the server's audit log."""
    time.sleep(0.6)  # audit.flush_interval_s is 0.2 s
    verify = shipway_cli(gateway, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    counted = re.match(r"(\d+) records, chain intact up to seq (\d+)", verify.stdout)
    assert counted is not None, verify.stdout
    rows = _audit_rows(gateway)  # nothing was sent since: the log is as verified
    assert int(counted.group(1)) == int(counted.group(2)) == len(rows) > 50
    kinds = {(kind, principal) for _, kind, principal, _ in rows}
    assert ("admin.key.create", "cli") in kinds
    assert ("admin.key.revoke", "cli") in kinds
    assert ("admin.key.create", f"key:{keys.ids['admin']}") in kinds
    assert ("admin.key.rotate", f"key:{keys.ids['admin']}") in kinds
    refused = [r for r in rows if r[1] == "request" and json.loads(r[3]).get("status") == 401]
    assert refused, "refused requests are audited too"

    seq, _, _, data = refused[len(refused) // 2]
    edited = {**json.loads(data), "status": 200}
    assert gateway.data_dir is not None
    with closing(sqlite3.connect(gateway.data_dir / "shipway.db", timeout=10)) as db, db:
        db.execute(
            "UPDATE audit_log SET data = ? WHERE seq = ?",
            (json.dumps(edited, sort_keys=True, separators=(",", ":")), seq),
        )
    verify = shipway_cli(gateway, "audit", "verify")
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"seq {seq}: edited" in verify.stdout

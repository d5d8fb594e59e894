"""Embeddings with the real all-MiniLM-L6-v2, model listing, health and readiness."""

import base64

import httpx
import numpy as np
import openai
from tests.e2e.conftest import CHAT, EMBED
from tests.support.servers import Server


def _vec(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def test_cat_is_nearer_kitten_than_carburetor(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model=EMBED, input=["cat", "kitten", "carburetor"])
    assert reply.model == EMBED
    assert [d.index for d in reply.data] == [0, 1, 2]
    cat, kitten, carburetor = (_vec(d.embedding) for d in reply.data)
    assert cat.shape == (384,)
    assert abs(np.linalg.norm(cat) - 1) < 1e-3
    assert cat @ kitten > cat @ carburetor + 0.2
    from tokenizers import Tokenizer

    from shipway.backends.model_files import embedded_embedding_model_path

    tokenizer = Tokenizer.from_file(str(embedded_embedding_model_path() / "tokenizer.json"))
    tokenizer.no_padding()
    expected = sum(len(tokenizer.encode(w).ids) for w in ("cat", "kitten", "carburetor"))
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == expected


def test_single_string_and_base64_agree(server: Server) -> None:
    body = {"model": EMBED, "input": "a sentence about cats"}
    as_float = httpx.post(server.base + "/v1/embeddings", json=body, timeout=60).json()
    as_b64 = httpx.post(
        server.base + "/v1/embeddings", json={**body, "encoding_format": "base64"}, timeout=60
    ).json()
    floats = np.asarray(as_float["data"][0]["embedding"], dtype=np.float32)
    decoded = np.frombuffer(base64.b64decode(as_b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(floats, decoded, atol=1e-6)


def test_openai_client_default_base64_path(client: openai.OpenAI) -> None:
    # The official client asks for base64 by default when numpy is present and decodes it.
    reply = client.embeddings.create(model=EMBED, input="hello")
    assert len(reply.data[0].embedding) == 384


def test_models_list_and_get(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == [CHAT, EMBED]
    model = client.models.retrieve(CHAT)
    assert model.id == CHAT and model.object == "model" and model.owned_by == "shipway"


def test_health_and_readiness_detail(server: Server) -> None:
    assert httpx.get(server.base + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.base + "/readyz").json()
    assert ready["ready"] is True
    worker = ready["models"][CHAT]["workers"][0]
    assert worker["state"] in ("idle", "busy") and worker["pid"] > 0
    assert len(worker["model_file"]["sha256"]) == 64
    assert ready["models"][EMBED]["capabilities"] == ["embeddings"]


def test_every_response_has_a_request_id(server: Server) -> None:
    for method, path in (("GET", "/v1/models"), ("GET", "/nope"), ("POST", "/v1/chat/completions")):
        response = httpx.request(method, server.base + path, content=b"{}")
        assert len(response.headers["x-request-id"]) >= 16
    echoed = httpx.get(server.base + "/v1/models", headers={"x-request-id": "client-abc.1"})
    assert echoed.headers["x-request-id"] == "client-abc.1"


def test_metrics_count_requests_and_queue(server: Server, client: openai.OpenAI) -> None:
    client.embeddings.create(model=EMBED, input="count me")
    text = httpx.get(server.base + "/metrics").text
    assert (
        'shipway_requests_total{endpoint="embeddings",model="all-minilm-l6-v2",status="200"}'
        in text
    )
    assert "shipway_queue_wait_seconds_bucket" in text
    assert 'shipway_queue_depth{model="smollm2-135m"}' in text


async def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server: Server) -> None:
    import asyncio

    texts = [f"sentence number {i} about {'cats' if i % 2 else 'engines'}" for i in range(24)]
    async with httpx.AsyncClient(timeout=60) as client:
        alone = (
            await client.post(
                server.base + "/v1/embeddings", json={"model": EMBED, "input": texts[5]}
            )
        ).json()
        replies = await asyncio.gather(
            *(
                client.post(server.base + "/v1/embeddings", json={"model": EMBED, "input": [t, t]})
                for t in texts
            )
        )
    for text, reply in zip(texts, replies, strict=True):
        body = reply.json()
        assert reply.status_code == 200 and len(body["data"]) == 2
        assert [row["index"] for row in body["data"]] == [0, 1]
        if text == texts[5]:
            assert np.allclose(
                body["data"][0]["embedding"], alone["data"][0]["embedding"], atol=1e-5
            )
            assert body["usage"]["prompt_tokens"] == 2 * alone["usage"]["prompt_tokens"]


def test_access_log_is_one_json_line_per_request(server: Server) -> None:
    import json
    import time

    body = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    httpx.post(
        server.base + "/v1/chat/completions",
        json=body,
        timeout=60,
        headers={"x-request-id": "log-check-1"},
    )
    httpx.post(
        server.base + "/v1/chat/completions",
        json={**body, "model": "nope"},
        headers={"x-request-id": "log-check-2"},
    )
    lines: dict[str, dict] = {}
    for _ in range(50):
        for raw in server.log.read_text().splitlines():
            if raw.startswith("{") and '"log-check-' in raw:
                entry = json.loads(raw)
                lines[entry["request_id"]] = entry
        if len(lines) == 2:
            break
        time.sleep(0.05)
    ok, missing = lines["log-check-1"], lines["log-check-2"]
    assert ok["event"] == "request" and ok["status"] == 200 and ok["model"] == CHAT
    assert ok["completion_tokens"] == 2 and ok["prompt_tokens"] > 0 and ok["total_ms"] > 0
    assert missing["status"] == 404 and missing["error_code"] == "model_not_found"

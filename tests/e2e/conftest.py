from collections.abc import Iterator

import httpx
import openai
import pytest
from tests.support.servers import Server, fake_upstream, shipway_server

CHAT = "smollm2-135m"
EMBED = "all-minilm-l6-v2"


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """The default `shipway serve` with no configuration at all: the two embedded models."""
    srv = shipway_server(None)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Server]:
    """A fake OpenAI-compatible upstream (shipway.ops.fake_upstream) per test module."""
    srv = fake_upstream()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client

from collections.abc import Iterator

import openai
import pytest
from tests.support.servers import Server, shipway_server

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

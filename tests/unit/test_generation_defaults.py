from typing import Any

import pytest

from shipway.backends.base import ChatRequest
from shipway.backends.generation_defaults import apply_defaults
from shipway.config import GenerationDefaults

MESSAGES = [{"role": "user", "content": "hi"}]
ALL = GenerationDefaults(
    temperature=0.2,
    top_p=0.9,
    max_tokens=256,
    stop=["###"],
    frequency_penalty=0.5,
    presence_penalty=-0.5,
    seed=7,
)


def _request(**sent: Any) -> ChatRequest:
    """A request as the route builds it: typed fields from the body, neutral when omitted."""
    body = {"model": "m", "messages": MESSAGES, **sent}
    typed = {k: v for k, v in sent.items() if v is not None}
    return ChatRequest(messages=MESSAGES, body=body, **typed)


def test_every_omitted_field_gets_its_default_in_request_and_body() -> None:
    filled = apply_defaults(_request(), ALL)
    expected = {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 256,
        "stop": ["###"],
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "seed": 7,
    }
    for name, value in expected.items():
        assert getattr(filled, name) == value, name
        assert filled.body[name] == value, name  # what an upstream receives


@pytest.mark.parametrize(
    ("name", "sent"),
    [
        ("temperature", 0.0),  # falsy, still the client's choice
        ("top_p", 1.0),
        ("max_tokens", 0),
        ("stop", []),  # "no stop sequences" is a choice too
        ("frequency_penalty", 0.0),
        ("presence_penalty", 0.0),
        ("seed", 0),
    ],
)
def test_a_value_the_client_sent_wins(name: str, sent: Any) -> None:
    filled = apply_defaults(_request(**{name: sent}), ALL)
    assert getattr(filled, name) == sent
    assert filled.body[name] == sent
    assert set(ALL.model_dump()) <= set(filled.body)  # the other fields got their defaults


def test_null_counts_as_omitted() -> None:
    filled = apply_defaults(_request(temperature=None, stop=None), ALL)
    assert filled.temperature == 0.2 and filled.body["temperature"] == 0.2
    assert filled.stop == ["###"] and filled.body["stop"] == ["###"]


def test_max_completion_tokens_counts_as_asking_for_a_length() -> None:
    request = ChatRequest(
        messages=MESSAGES,
        max_tokens=12,
        body={"model": "m", "messages": MESSAGES, "max_completion_tokens": 12},
    )
    filled = apply_defaults(request, ALL)
    assert filled.max_tokens == 12
    assert "max_tokens" not in filled.body  # the upstream sees only the spelling it was sent


def test_the_default_length_is_lowered_to_the_key_cap() -> None:
    # The cap stage refuses a max_tokens above the key's cap; the client never asked for 256.
    assert apply_defaults(_request(), ALL, key_max_tokens=50).body["max_tokens"] == 50
    assert apply_defaults(_request(), ALL, key_max_tokens=500).max_tokens == 256
    assert apply_defaults(_request(max_tokens=80), ALL, key_max_tokens=50).max_tokens == 80


def test_no_defaults_leave_the_request_as_it_was() -> None:
    request = _request(temperature=0.5)
    assert apply_defaults(request, GenerationDefaults()) is request
    assert apply_defaults(request, GenerationDefaults(), key_max_tokens=10) is request


def test_the_defaults_list_is_not_shared_with_the_request() -> None:
    filled = apply_defaults(_request(), ALL)
    filled.stop.append("more")
    assert ALL.stop == ["###"]

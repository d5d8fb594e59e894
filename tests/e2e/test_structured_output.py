"""Structured output from the embedded SmolLM2-135M, enforced by llama.cpp grammars.

The official client's ``parse`` helper sends the pydantic model as a strict JSON schema and
parses the answer back; it raises if the answer is cut short or does not validate. The
model's defaults (temperature 0.2, top_p 0.9, max_tokens 256) apply: nothing is tuned here.
"""

import enum
import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel
from tests.e2e.conftest import CHAT
from tests.support.servers import Server

RUNS = 20
SUBJECTS = [
    "a baker", "a pilot", "a nurse", "a farmer", "a painter", "a judge", "a miner",
    "a chef", "a sailor", "a teacher", "a poet", "a tailor", "a driver", "a singer",
    "a doctor", "a guard", "a clerk", "a monk", "a diver", "a smith",
]  # fmt: skip


class Address(BaseModel):
    street: str
    city: str


class Person(BaseModel):
    name: str
    age: int
    address: Address


class Colour(enum.StrEnum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Paint(BaseModel):
    colour: Colour
    glossy: bool


class Item(BaseModel):
    name: str
    quantity: int


class Order(BaseModel):
    items: list[Item]


CASES: list[tuple[type[BaseModel], str]] = [
    (Person, "Describe {subject} as a person with a home address."),
    (Paint, "Choose a paint colour for {subject}."),
    (Order, "Write a shopping order for {subject}."),
]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "prompt"), CASES, ids=["nested", "enum", "array"])
def test_parse_returns_the_model_every_time(
    client: openai.OpenAI, model: type[BaseModel], prompt: str
) -> None:
    for run, subject in enumerate(SUBJECTS[:RUNS]):
        completion = client.chat.completions.parse(
            model=CHAT,
            messages=[{"role": "user", "content": prompt.format(subject=subject)}],
            response_format=model,
            seed=run,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", (run, choice.message.content)
        assert isinstance(choice.message.parsed, model), (run, choice.message.content)


def test_streamed_structured_output_parses(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=CHAT,
        messages=[{"role": "user", "content": "Choose a paint colour for a kitchen."}],
        response_format=Paint,
        seed=3,
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 1  # streamed token by token, not in one piece
    assert isinstance(final.choices[0].message.parsed, Paint)
    assert "".join(deltas) == final.choices[0].message.content


def test_json_object_answers_are_objects(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Give the name and age of a cat, in JSON."}],
        response_format={"type": "json_object"},
        n=3,
        seed=5,
    )
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        assert isinstance(json.loads(choice.message.content or ""), dict)


def test_a_schema_that_is_not_strict_is_enforced_too(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 12},
            "year": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
            "rating": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        },
        "required": ["title", "tags"],
    }
    reply = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Describe a film."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "film", "schema": schema, "strict": False},
        },
        n=3,
        seed=2,
    )
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content or ""), schema)


def test_an_answer_cut_short_says_length_and_parse_raises(client: openai.OpenAI) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model=CHAT,
            messages=[{"role": "user", "content": "Describe a baker."}],
            response_format=Person,
            max_tokens=4,
        )


def _schema_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": CHAT,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    return schema


SCHEMA = "response_format.json_schema.schema"


@pytest.mark.parametrize(
    ("schema", "param", "needle"),
    [
        (
            {"type": "object", "properties": {"x": {"type": "object", "patternProperties": {}}}},
            f"{SCHEMA}.properties.x.patternProperties",
            "`patternProperties` cannot be enforced",
        ),
        ({"type": "integer", "minimum": 0}, f"{SCHEMA}.minimum", "`minimum`"),
        ({"type": "string", "pattern": "^a+$"}, f"{SCHEMA}.pattern", "`pattern`"),
        ({"type": "string", "format": "email"}, f"{SCHEMA}.format", "'email'"),
        ({"allOf": [{"type": "object"}]}, f"{SCHEMA}.allOf", "`allOf`"),
        ({"$ref": "https://example.com/s.json"}, f"{SCHEMA}.$ref", "#/$defs"),
        (_nested(12), SCHEMA + ".properties.x" * 11, "schema too deep"),
        (
            {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["y"]},
            f"{SCHEMA}.required",
            "'y'",
        ),
        ({"type": "strin"}, f"{SCHEMA}.type", "must be one of"),
        ({"type": "array", "items": {}, "maxItems": 10_000}, f"{SCHEMA}.maxItems", "256"),
    ],
    ids=[
        "patternProperties",
        "minimum",
        "pattern",
        "format",
        "allOf",
        "remote-ref",
        "too-deep",
        "required-undefined",
        "bad-type",
        "huge-bound",
    ],
)
def test_a_schema_the_grammar_cannot_enforce_is_a_400_naming_it(
    server: Server, schema: dict[str, Any], param: str, needle: str
) -> None:
    response = httpx.post(
        server.base + "/v1/chat/completions", json=_schema_body(schema), timeout=30
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert needle in error["message"]


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, SCHEMA),
        (
            {"type": "json_schema", "json_schema": {"schema": {}}},
            "response_format.json_schema.name",
        ),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}}, SCHEMA),
    ],
)
def test_a_malformed_json_schema_is_a_400(
    server: Server, response_format: dict[str, Any], param: str
) -> None:
    body = {**_schema_body({}), "response_format": response_format}
    response = httpx.post(server.base + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param

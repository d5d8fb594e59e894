"""JSON schemas checked for what a llama.cpp grammar can enforce, before one is written.

The grammar comes from llama-cpp-python's port of llama.cpp's ``json_schema_to_grammar``
(``SchemaConverter``, see json_grammar.py). That converter reads one branch of each schema
node (``$ref``, then ``anyOf``/``oneOf``, a type list, ``const``, ``enum``, an object's
properties, an array's items, a string's format or length) and silently drops every other
keyword. So ``check_schema`` walks a schema the way the converter will and refuses, with a 400
whose ``param`` is the keyword's path, any keyword the chosen branch would not enforce
(``minimum``, ``pattern``, ``patternProperties``, ``allOf`` …): an answer always validates
against the schema the client sent. Annotations (``title``, ``description``, ``default``,
``examples`` …) are dropped, as they constrain nothing.

Bounds: at most ``MAX_NESTING`` levels of nested objects and arrays, ``MAX_NODES``
subschemas, ``MAX_SCHEMA_BYTES`` of JSON, and length/count bounds up to ``MAX_REPEAT`` (the
grammar spells a bound out). An array without ``maxItems`` gets ``DEFAULT_MAX_ITEMS``: a
small model left free repeats list items until ``max_tokens``; a schema that wants more says
so. A schema that allows any value (``{}``, ``true``) becomes a union of every JSON type
(``ANY_VALUE``), which the converter would otherwise read as "any object".
"""

from __future__ import annotations

from typing import Any

import orjson

from shipway.errors import InvalidRequest, UnsupportedParameter

__all__ = [
    "ANY_VALUE",
    "DEFAULT_MAX_ITEMS",
    "DEFS",
    "MAX_NESTING",
    "MAX_NODES",
    "MAX_REPEAT",
    "MAX_SCHEMA_BYTES",
    "check_schema",
]

MAX_NESTING = 10
MAX_NODES = 1000
MAX_REPEAT = 256
MAX_SCHEMA_BYTES = 100_000
DEFAULT_MAX_ITEMS = 10  # values in an array (or free-form object) that sets no bound
_MAX_STEPS = 64  # subschema steps along one path (anyOf in anyOf …), a recursion bound

_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "discriminator",  # OpenAPI's hint beside oneOf/anyOf; the branches are enforced
    }
)
DEFS = ("$defs", "definitions")
_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid3", "uuid4", "uuid5"})
# Every JSON value, as a type union the converter turns into its generic rules.
ANY_VALUE: dict[str, Any] = {"type": ["object", "array", "string", "number", "boolean", "null"]}


def check_schema(schema: Any, param: str) -> dict[str, Any]:
    """The schema without annotations, ready for ``schema_rules``; or a 400 naming the path.

    ``param`` is where the schema sits in the request body, e.g.
    ``response_format.json_schema.schema``.
    """
    if schema is True:
        return dict(ANY_VALUE)
    if not isinstance(schema, dict):
        raise InvalidRequest(f"Invalid '{param}': a JSON schema must be an object", param=param)
    if len(orjson.dumps(schema)) > MAX_SCHEMA_BYTES:
        # Enums and constants are spelled out in the grammar, which every token is checked
        # against: the size is bounded as well as the shape.
        raise _refuse(param, f"the schema is larger than {MAX_SCHEMA_BYTES:,} bytes of JSON")
    walker = _Walker(schema, param)
    cleaned = walker.visit(schema, param, nesting=0, steps=0)
    for key in DEFS:
        defs = schema.get(key)
        if defs is None:
            continue
        if not isinstance(defs, dict):
            raise InvalidRequest(f"Invalid '{param}.{key}': must be an object", param=param)
        cleaned[key] = {
            name: walker.visit(sub, f"{param}.{key}.{name}", nesting=0, steps=1)
            for name, sub in defs.items()
        }
    return cleaned


class _Walker:
    def __init__(self, root: dict[str, Any], param: str) -> None:
        self._root = root
        self._param = param
        self._nodes = 0

    def visit(self, schema: Any, path: str, *, nesting: int, steps: int) -> dict[str, Any]:
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _refuse(path, f"the schema has more than {MAX_NODES} subschemas")
        if nesting > MAX_NESTING or steps > _MAX_STEPS:
            raise _refuse(
                path,
                f"schema too deep: more than {MAX_NESTING} levels of nested objects and arrays",
            )
        if schema is True:
            return dict(ANY_VALUE)
        if not isinstance(schema, dict):
            raise InvalidRequest(f"Invalid '{path}': a subschema must be an object", param=path)
        node = {k: v for k, v in schema.items() if k not in _ANNOTATIONS and k not in DEFS}
        if not node:
            return dict(ANY_VALUE)
        honoured, children = self._branch(node, path)
        for key in node:
            if key not in honoured:
                raise _refuse(f"{path}.{key}", _why(key))
        deeper = {"nesting": nesting + 1, "steps": steps + 1}
        same = {"nesting": nesting, "steps": steps + 1}
        for key, index, sub, grows in children:
            where = f"{path}.{key}" + (f"[{index}]" if isinstance(index, int) else "")
            where += f".{index}" if isinstance(index, str) else ""
            cleaned = self.visit(sub, where, **(deeper if grows else same))
            if index is None:
                node[key] = cleaned
            else:
                node[key][index] = cleaned
        return node

    def _branch(
        self, node: dict[str, Any], path: str
    ) -> tuple[set[str], list[tuple[str, int | str | None, Any, bool]]]:
        """The keywords the converter enforces on this node, and its subschemas to visit.

        Mirrors the order of ``SchemaConverter.visit``; each child is (keyword, index or
        property name, subschema, whether it is one level deeper in the JSON value).
        """
        kind = node.get("type")
        if "$ref" in node:
            self._check_ref(node["$ref"], f"{path}.$ref")
            return {"$ref"}, []
        for key in ("anyOf", "oneOf"):
            if key in node:
                options = node[key]
                if not isinstance(options, list) or not options:
                    raise _invalid(f"{path}.{key}", "must be a non-empty array of schemas")
                node[key] = list(options)
                return {key}, [(key, i, sub, False) for i, sub in enumerate(options)]
        if isinstance(kind, list):
            if not kind or any(t not in _TYPES for t in kind):
                raise _invalid(f"{path}.type", f"each type must be one of {sorted(_TYPES)}")
            return {"type"}, []
        if kind is not None and kind not in _TYPES:
            raise _invalid(f"{path}.type", f"must be one of {sorted(_TYPES)}")
        if "const" in node:
            return {"const", "type"}, []
        if "enum" in node:
            if not isinstance(node["enum"], list) or not node["enum"]:
                raise _invalid(f"{path}.enum", "must be a non-empty array")
            return {"enum", "type"}, []
        extra = node.get("additionalProperties")
        if kind in (None, "object") and ("properties" in node or "additionalProperties" in node):
            return self._object(node, path, extra)
        if kind in (None, "array") and ("items" in node or "prefixItems" in node):
            return self._array(node, path)
        if kind in (None, "string") and "format" in node:
            if node["format"] not in _FORMATS:
                raise _refuse(f"{path}.format", f"format {node['format']!r} cannot be enforced")
            return {"type", "format"}, []
        if kind == "string" and ("minLength" in node or "maxLength" in node):
            _bounds(node, path, "minLength", "maxLength")
            return {"type", "minLength", "maxLength"}, []
        if kind is None:
            # Only keywords the converter ignores (pattern, minimum …): say which.
            return set(), []
        return {"type"}, []

    def _object(
        self, node: dict[str, Any], path: str, extra: Any
    ) -> tuple[set[str], list[tuple[str, int | str | None, Any, bool]]]:
        properties = node.get("properties", {})
        if not isinstance(properties, dict):
            raise _invalid(f"{path}.properties", "must be an object")
        required = node.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise _invalid(f"{path}.required", "must be an array of property names")
        for name in required:
            if name not in properties:
                raise _refuse(f"{path}.required", f"required property {name!r} is not defined")
        if "properties" in node:
            node["properties"] = dict(properties)
        children: list[tuple[str, int | str | None, Any, bool]] = [
            ("properties", name, sub, True) for name, sub in properties.items()
        ]
        if extra is True and "properties" not in node:
            # The converter reads this as no object rule at all: say "any object" instead.
            del node["additionalProperties"]
            node["type"] = "object"
        elif extra is True:
            node["additionalProperties"] = dict(ANY_VALUE)
        elif extra is not None and extra is not False:
            children.append(("additionalProperties", None, extra, True))
        return {"type", "properties", "required", "additionalProperties"}, children

    def _array(
        self, node: dict[str, Any], path: str
    ) -> tuple[set[str], list[tuple[str, int | str | None, Any, bool]]]:
        items = node.get("items")
        if "prefixItems" in node:
            prefix = node["prefixItems"]
            if not isinstance(prefix, list) or not prefix:
                raise _invalid(f"{path}.prefixItems", "must be a non-empty array of schemas")
            if items not in (None, False):
                raise _refuse(f"{path}.items", "items after prefixItems cannot be enforced")
            node.pop("items", None)
            node["prefixItems"] = list(prefix)
            # The grammar writes exactly the prefix: bounds that allow that many are kept.
            _bounds(node, path, "minItems", "maxItems")
            if node.get("minItems", 0) > len(prefix):
                raise _refuse(f"{path}.minItems", "more items than prefixItems cannot be enforced")
            if node.get("maxItems", len(prefix)) < len(prefix):
                raise _refuse(f"{path}.maxItems", "fewer items than prefixItems cannot be enforced")
            return {"type", "prefixItems", "items", "minItems", "maxItems"}, [
                ("prefixItems", i, sub, True) for i, sub in enumerate(prefix)
            ]
        if isinstance(items, list):
            raise _refuse(f"{path}.items", "an array of item schemas: use prefixItems")
        _bounds(node, path, "minItems", "maxItems")
        if node.get("maxItems") is None:
            node["maxItems"] = max(node.get("minItems", 0), DEFAULT_MAX_ITEMS)
        return {"type", "items", "minItems", "maxItems"}, [("items", None, items, True)]

    def _check_ref(self, ref: Any, path: str) -> None:
        parts = ref[2:].split("/") if isinstance(ref, str) and ref.startswith("#/") else []
        if len(parts) != 2 or parts[0] not in DEFS:
            raise _refuse(path, "only references to #/$defs/<name> are supported")
        defs = self._root.get(parts[0])
        if not isinstance(defs, dict) or parts[1] not in defs:
            raise _invalid(path, f"{ref!r} does not resolve inside the schema")


def _bounds(node: dict[str, Any], path: str, low: str, high: str) -> None:
    for key in (low, high):
        value = node.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _invalid(f"{path}.{key}", "must be a non-negative integer")
        if value > MAX_REPEAT:
            raise _refuse(f"{path}.{key}", f"bounds above {MAX_REPEAT} cannot be enforced")
    if node.get(high) is not None and node.get(low, 0) > node[high]:
        raise _invalid(f"{path}.{low}", f"is larger than {high}")


def _why(key: str) -> str:
    if key == "allOf":
        return "`allOf` cannot be enforced (merge its schemas into one)"
    return f"the keyword `{key}` cannot be enforced here"


def _refuse(path: str, reason: str) -> UnsupportedParameter:
    return UnsupportedParameter(
        f"'{path}': {reason}. Local models enforce JSON schemas with a llama.cpp grammar; "
        "simplify the schema, or route the request to an upstream model",
        param=path,
    )


def _invalid(path: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{path}': {reason}", param=path, code="invalid_value")

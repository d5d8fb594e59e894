"""Checked JSON schemas (json_schema_check.py) written as one llama.cpp GBNF grammar.

The writing is llama-cpp-python's port of llama.cpp's ``json_schema_to_grammar``
(``SchemaConverter``), with changes that keep answers valid and let them finish:

- a string character excludes control characters (a raw newline is invalid JSON);
- a free-form object (``json_object``, ``{"type": "object"}``), a free-form array and an
  object's ``additionalProperties`` hold at most ``DEFAULT_MAX_ITEMS`` values;
- after an optional property, extra properties (``additionalProperties``) get the comma and
  the optionality the converter's own rule lacks (it wrote ``{"a": 1"b": 2}``);
- definitions are renamed ``d0``, ``d1`` …: the converter names a reference's rule after the
  definition and looks it up among all rules, so a definition called ``string`` or ``space``
  would resolve to the built-in rule of that name.

Whitespace stays the converter's: at most one space between tokens, so a small model cannot
run away in blanks. The converter module is pure Python; it is loaded from its file so that
the gateway does not load libllama (``import llama_cpp`` does, for about a second).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from typing import Any

import orjson

from shipway.backends.json_schema_check import DEFAULT_MAX_ITEMS, DEFS

__all__ = ["schema_rules"]


def schema_rules(schemas: dict[str, dict[str, Any]]) -> str:
    """GBNF defining one rule per name, each matching its schema (as ``check_schema``
    returned it); one grammar, so ``{"root": schema}`` is a whole grammar by itself."""
    key = orjson.dumps(schemas).decode()  # in the client's order: properties keep theirs
    return _cached_rules(key)


@functools.lru_cache(maxsize=256)
def _cached_rules(schemas_json: str) -> str:
    converter = _tight_converter(_converter_module())(
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    aliases = []
    renamed = 0
    for name, schema in orjson.loads(schemas_json).items():
        # Definitions become d0, d1 …: the converter names a reference's rule after the
        # definition and looks it up among all rules, so a definition called `string` or
        # `space` would otherwise resolve to the built-in rule of that name.
        schema, renamed = _rename_defs(schema, renamed)
        top = converter.visit(converter.resolve_refs(schema, name), name)
        if top != name:
            aliases.append(f"{name} ::= {top}")
    return "\n".join([converter.format_grammar(), *aliases])


def _rename_defs(schema: dict[str, Any], start: int) -> tuple[dict[str, Any], int]:
    names: dict[str, str] = {}
    defs: dict[str, Any] = {}
    for key in DEFS:
        for name, sub in (schema.pop(key, None) or {}).items():
            names[f"#/{key}/{name}"] = f"d{start + len(names)}"
            defs[names[f"#/{key}/{name}"]] = sub

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            out = {k: rewrite(v) for k, v in node.items()}
            if isinstance(ref, str) and ref in names:
                out["$ref"] = "#/$defs/" + names[ref]
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    renamed = rewrite({**schema, "$defs": defs}) if defs else schema
    if "$ref" in renamed:
        # The converter resolves no reference inside a node it found a reference on: the
        # definitions beside a top-level $ref would keep theirs unresolved.
        renamed = {"anyOf": [{"$ref": renamed.pop("$ref")}], **renamed}
    return renamed, start + len(names)


@functools.cache
def _converter_module() -> Any:
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.submodule_search_locations
    location = f"{next(iter(spec.submodule_search_locations))}/llama_grammar.py"
    module_spec = importlib.util.spec_from_file_location("_shipway_llama_grammar", location)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _at_most(item: str, count: int) -> str:
    """``item`` then up to ``count - 1`` more after commas, spelled out as GBNF optionals."""
    return item + f' ("," space {item}' * (count - 1) + ")?" * (count - 1)


# How the converter spells "one or more key-value pairs" of additionalProperties.
_ANY_MORE = re.compile(r'^(\S+) \( "," space \1 \)\*$')
_TIGHT_RULES = {
    "char": r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F] [0-9a-fA-F])",
    "object": '"{" space ( '
    + _at_most('string ":" space value', DEFAULT_MAX_ITEMS)
    + ' )? "}" space',
    "array": '"[" space ( ' + _at_most("value", DEFAULT_MAX_ITEMS) + ' )? "]" space',
}


@functools.cache
def _tight_converter(module: Any) -> Any:
    class TightConverter(module.SchemaConverter):  # type: ignore[misc]
        """The converter, with JSON-valid string characters (no raw control characters)
        and free-form arrays and objects of at most ``DEFAULT_MAX_ITEMS`` values."""

        def _add_rule(self, name: str, rule: str) -> str:
            builtin = module.PRIMITIVE_RULES.get(name)
            if builtin is not None and rule == builtin.content:
                rule = _TIGHT_RULES.get(name, rule)
            elif name.endswith("additional-kvs") and (found := _ANY_MORE.match(rule)):
                rule = _at_most(found.group(1), DEFAULT_MAX_ITEMS)  # additionalProperties
            elif name.endswith("-rest") and rule.endswith("additional-kvs") and " " not in rule:
                # After an optional property, the converter makes extra properties required
                # and forgets their comma (`{"a": 1"b": 2}`): they are optional, after a comma.
                rule = f'( "," space {rule} )?'
            key: str = super()._add_rule(name, rule)
            return key

    return TightConverter

"""Tools for a local model: the definitions checked, shown in the prompt, and enforced.

A local model's chat template may not render tools, so Shipway writes them into the system
message itself (appended to the client's system message, or as a new first message)::

    You can call these functions:
    <tools>
    {"type": "function", "function": {"name": …, "description": …, "parameters": {…}}}
    </tools>
    To call one, answer with <tool_call>{"name": <function name>, "arguments": <arguments
    object>}</tool_call> and nothing else; otherwise answer the user directly.

(with ``required`` or a named function, the last sentence asks for the call alone, without
tags). The answer is then constrained by a llama.cpp grammar:

- ``required`` / a named function: ``{"name": "<a name>", "arguments": {…}}`` where the
  arguments follow that function's ``parameters`` schema; exactly one call per answer, also
  when ``parallel_tool_calls`` is true (which is accepted: one call is a valid parallel answer);
- ``auto``: either ``<tool_call>`` + such a call + ``</tool_call>``, or text that does not
  start with ``<`` (or, with a JSON ``response_format``, that JSON);
- ``none``: no tools in the prompt, plain text (or the ``response_format``).

Earlier turns are rendered as text the model can read: an assistant's ``tool_calls`` as
``<tool_call>{…}</tool_call>`` lines after its content, and consecutive ``tool`` messages as
one ``user`` message of ``<tool_response>{"name", "content"}</tool_response>`` blocks (a
``user`` turn renders under every chat template; a ``tool`` role does not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from shipway.backends.json_grammar import schema_rules
from shipway.backends.json_schema_check import ANY_VALUE, DEFS, check_schema
from shipway.errors import InvalidRequest, UnsupportedParameter

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "Function",
    "ToolPlan",
    "plan_tools",
    "render_assistant",
    "render_tool_results",
]

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
# Any text that does not open a call: the grammar's text branch in `auto` mode.
_TEXT_RULE = "text ::= [^<] [^\\x00]*"


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    definition: dict[str, Any]  # the client's function object, for the prompt
    parameters: dict[str, Any]  # checked (annotations dropped), for the grammar


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What a local chat with tools does: the prompt text, the grammar, how to read it."""

    choice: Literal["auto", "required"]
    system_text: str
    grammar: str
    tagged: bool  # the call is wrapped in <tool_call>…</tool_call> (auto mode)


def plan_tools(body: dict[str, Any], text_schema: dict[str, Any] | None) -> ToolPlan | None:
    """The plan for ``tools``/``tool_choice`` (None: no tool can be called), or a 400.

    ``text_schema``: the checked ``response_format`` schema, which text answers follow.
    """
    functions = _functions(body.get("tools"))
    choice = _choice(body.get("tool_choice"), functions)
    if choice == "none" or not functions:
        return None
    if choice not in ("auto", "required"):
        functions = [f for f in functions if f.name == choice]
    listing = "\n".join(orjson.dumps(f.definition).decode() for f in functions)
    call = '{"name": <function name>, "arguments": <arguments object>}'
    if choice == "auto":
        how = (
            f"To call one, answer with {CALL_OPEN}{call}{CALL_CLOSE} and nothing else; "
            "otherwise answer the user directly."
        )
    else:
        how = f"Answer with one call, as {call}."
    system_text = f"You can call these functions:\n<tools>\n{listing}\n</tools>\n{how}"
    rules: dict[str, dict[str, Any]] = {
        f"call{i}": _call_schema(f) for i, f in enumerate(functions)
    }
    calls = " | ".join(rules)
    if choice == "auto":
        if text_schema is not None:
            rules["text"] = text_schema
        grammar = schema_rules(rules) + f'\nroot ::= "{CALL_OPEN}" ({calls}) "{CALL_CLOSE}" | text'
        if text_schema is None:
            grammar += f"\n{_TEXT_RULE}"
        return ToolPlan("auto", system_text, grammar, tagged=True)
    grammar = schema_rules(rules) + f"\nroot ::= {calls}"
    return ToolPlan("required", system_text, grammar, tagged=False)


def _call_schema(function: Function) -> dict[str, Any]:
    """``{"name": <the name>, "arguments": <its parameters>}``, name first, both required."""
    parameters = dict(function.parameters)
    defs: dict[str, Any] = {k: parameters.pop(k) for k in DEFS if k in parameters}
    return {
        "type": "object",
        "properties": {"name": {"const": function.name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
        **defs,
    }


def _functions(tools: Any) -> list[Function]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _invalid("tools", "must be an array of tools")
    functions: list[Function] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _invalid(where, "must be an object")
        if tool.get("type") != "function":
            raise UnsupportedParameter(
                f"tool type {tool.get('type')!r} is not supported by this model (an embedded "
                "text model calls `function` tools only)",
                param=f"{where}.type",
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            raise _invalid(f"{where}.function", "must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _invalid(
                f"{where}.function.name", "must be 1-64 letters, digits, underscores or dashes"
            )
        if any(f.name == name for f in functions):
            raise _invalid(f"{where}.function.name", f"the name {name!r} is used twice")
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise _invalid(f"{where}.function.description", "must be a string")
        parameters = function.get("parameters", _NO_PARAMETERS)
        where = f"{where}.function.parameters"
        checked = _object_schema(check_schema(parameters, where), where)
        functions.append(Function(name, {"type": "function", "function": function}, checked))
    return functions


def _object_schema(schema: dict[str, Any], param: str) -> dict[str, Any]:
    """Arguments are an object: `{}` means any object; anything else must say object."""
    body = {k: v for k, v in schema.items() if k not in DEFS}
    if "type" not in body and ("properties" in body or "additionalProperties" in body):
        return {**schema, "type": "object"}
    if body.get("type") == ANY_VALUE["type"]:
        return {**schema, "type": "object"}  # `{}`: any arguments object
    if body.get("type") != "object":
        raise _invalid(param, "must describe an object (`type: object`)")
    return schema


def _choice(value: Any, functions: list[Function]) -> str:
    if value is None:
        return "auto"
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise _invalid("tool_choice", "must be 'none', 'auto', 'required' or a function")
        if value == "required" and not functions:
            raise _invalid("tool_choice", "'required' needs `tools`")
        return value
    if not isinstance(value, dict) or value.get("type") != "function":
        raise _invalid("tool_choice", "must be 'none', 'auto', 'required' or a function")
    function = value.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise _invalid("tool_choice.function.name", "must be a function name")
    if all(f.name != name for f in functions):
        raise _invalid("tool_choice.function.name", f"no function named {name!r} in `tools`")
    return name


def _invalid(param: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {reason}.", param=param, code="invalid_value")


def render_assistant(text: str, calls: Any, index: int) -> str:
    """An assistant turn's text followed by its tool calls, one ``<tool_call>`` line each."""
    if not isinstance(calls, list):
        raise _invalid(f"messages[{index}].tool_calls", "must be an array")
    lines = [text] if text else []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _invalid(f"messages[{index}].tool_calls[{j}]", "needs function.name")
        arguments = function.get("arguments", "{}")
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError:
            parsed = arguments  # shown as the string it is
        call_json = orjson.dumps({"name": function["name"], "arguments": parsed}).decode()
        lines.append(f"{CALL_OPEN}{call_json}{CALL_CLOSE}")
    return "\n".join(lines)


def render_tool_results(results: list[tuple[str | None, str]]) -> str:
    """Consecutive ``tool`` messages (function name if known, content) as one user turn."""
    blocks = []
    for name, content in results:
        payload = orjson.dumps({"name": name, "content": content}).decode()
        blocks.append(f"<tool_response>\n{payload}\n</tool_response>")
    return "\n".join(blocks)

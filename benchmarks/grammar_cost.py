"""Grammar-constrained generation against free generation: what the constraint costs.

Shipway's own llama.cpp runner (the code inside a worker, called in this process, so HTTP and
the worker pipe add nothing) generates from one prompt, free and under each kind of grammar
the gateway builds: ``response_format`` ``json_object`` and ``json_schema`` (a nested object),
``tool_choice: required`` (a call to one of two functions) and ``tool_choice: auto`` answered
in text (a grammar over free text). Sampling uses the embedded model's defaults (temperature
0.2, top_p 0.9) with a fixed seed per request. A constrained answer ends when its JSON is
whole, so answers differ in length: the rate is generated tokens over generation seconds,
summed over the requests. The gateway's cost, turning the schema into a grammar, is timed
apart (uncached; it is cached per schema afterwards).

    python benchmarks/grammar_cost.py [--quick]
"""

from __future__ import annotations

import gc
import time
from typing import Any

from _common import log, parse_args, report, table
from shipway.backends import json_grammar
from shipway.backends.base import ChatRequest
from shipway.backends.local_chat import plan_local_chat
from shipway.backends.model_files import embedded_chat_model_path

PROMPT = "Describe a lighthouse keeper: name, age, home address and what a day is like."
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
            "required": ["street", "city"],
            "additionalProperties": False,
        },
        "day": {"type": "string"},
    },
    "required": ["name", "age", "address", "day"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "save_person",
            "description": "Save a person's record.",
            "parameters": PERSON,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"timezone": {"type": "string"}},
                "required": ["timezone"],
            },
        },
    },
]
MODES: dict[str, dict[str, Any]] = {
    "free (no grammar)": {},
    "json_object": {"response_format": {"type": "json_object"}},
    "json_schema (nested object)": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    },
    "tools, tool_choice=required": {"tools": TOOLS, "tool_choice": "required"},
    "tools, tool_choice=auto (text)": {"tools": TOOLS, "tool_choice": "auto"},
}


def _request(extra: dict[str, Any], max_tokens: int) -> tuple[ChatRequest, Any]:
    messages = [{"role": "user", "content": PROMPT}]
    body = {"model": "smollm2-135m", "messages": messages, **extra}
    request = ChatRequest(messages=messages, max_tokens=max_tokens, body=body)
    return request, plan_local_chat(request)


def build_ms(extra: dict[str, Any], repeats: int) -> float:
    """Gateway time to check the schema(s) and write the grammar, cache emptied each time."""
    if not extra:
        return 0.0
    started = time.perf_counter()
    for _ in range(repeats):
        json_grammar._cached_rules.cache_clear()
        _request(extra, 1)
    return (time.perf_counter() - started) / repeats * 1000


def generate(runner: Any, extra: dict[str, Any], requests: int, max_tokens: int) -> dict[str, Any]:
    request, plan = _request(extra, max_tokens)
    wire = {**plan.wire(request), "temperature": 0.2, "top_p": 0.9}
    # Free text runs to max_tokens; a grammar decides when its answer ends.
    wire["ignore_eos"] = plan.grammar is None
    runner.chat({**wire, "max_tokens": 4, "seed": 0}, lambda piece: None, lambda: False)
    tokens = 0
    seconds = 0.0
    for seed in range(requests):
        started = time.perf_counter()
        done = runner.chat({**wire, "seed": seed}, lambda piece: None, lambda: False)
        seconds += time.perf_counter() - started
        tokens += done["completion_tokens"]
    return {"requests": requests, "tokens": tokens, "seconds": seconds}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    requests, max_tokens = (2, 48) if args.quick else (8, 128)
    from shipway.backends.llamacpp import LlamaCppRunner

    runner = LlamaCppRunner(embedded_chat_model_path(), n_ctx=2048, n_batch=512, threads=2)
    rows: list[list[Any]] = []
    free_rate = 0.0
    for mode, extra in MODES.items():
        log(f"{mode}: {requests} request(s)")
        r = generate(runner, extra, requests, max_tokens)
        rate = r["tokens"] / r["seconds"]
        free_rate = free_rate or rate
        cost = "-" if not extra else f"{1 - rate / free_rate:.0%}"
        built = build_ms(extra, 20)
        rows.append([mode, r["requests"], r["tokens"], r["seconds"], rate, cost, built])
    del runner
    gc.collect()
    headers = ["mode", "requests", "completion tokens", "seconds", "tokens/s"]
    headers += ["tokens/s lost to the grammar", "grammar build ms (gateway)"]
    notes = [
        "Model `smollm2-135m` (SmolLM2-135M-Instruct GGUF, Q4_1), Shipway's `LlamaCppRunner` "
        f"in-process, 2 threads, n_ctx 2048, max_tokens {max_tokens}, temperature 0.2, "
        "top_p 0.9, one seed per request; prompt re-evaluation is included (it is cached).",
        "Free text ignores the end-of-sequence token so each request generates max_tokens; "
        "a constrained answer stops when its JSON is whole (tool prompts also carry the "
        "functions, about 200 tokens more).",
        "The grammar is applied by llama.cpp's grammar sampler to every candidate token at "
        "every step; the build column is the gateway's schema check and GBNF writing.",
    ]
    report("Grammar-constrained generation", [table(headers, rows)], notes)


if __name__ == "__main__":
    main()

"""The ``text_completion`` event stream of ``/v1/completions``, over one or more prompts.

The prompts of a list are streamed one after the other (choice indexes tell them apart), so
one worker or upstream place serves the request at a time, as a client reading in order
would want. Each prompt's ``usage`` is summed into one chunk at the end, sent when the
client asked with ``stream_options.include_usage``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson

from shipway.api.completion_calls import PromptCall, UsageTotal
from shipway.errors import ShipwayError
from shipway.pipeline import Pipeline, carries_output

__all__ = ["completion_events", "every_prompt", "hold_first_output"]

Cost = Callable[[str, dict[str, Any]], dict[str, Any]]


async def every_prompt(
    pipeline: Pipeline, prompts: list[PromptCall], ended: Callable[[], None]
) -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
    """(prompt number, chunk) of each prompt's pipeline stream, each started when the one
    before has ended. Closing it closes the stream running (its slot); ``ended()`` runs once
    the last stream is closed, however that happens."""
    stream: AsyncGenerator[dict[str, Any], None] | None = None
    try:
        for i, prompt in enumerate(prompts):
            stream = pipeline.stream(prompt.call, prompt.chat)
            try:
                async for chunk in stream:
                    yield i, chunk
            except ShipwayError as error:
                prompt.name_in(error)
                raise
    finally:
        if stream is not None:
            await stream.aclose()
        ended()


async def hold_first_output(
    chunks: AsyncGenerator[tuple[int, dict[str, Any]], None],
) -> list[tuple[int, dict[str, Any]]]:
    """The chunks up to and including the first that carries output (see api/route_support's
    ``hold_until_output``; these are tagged with their prompt)."""
    held: list[tuple[int, dict[str, Any]]] = []
    async for item in chunks:
        held.append(item)
        if carries_output(item[1]):
            break
    return held


async def completion_events(
    held: list[tuple[int, dict[str, Any]]],
    chunks: AsyncGenerator[tuple[int, dict[str, Any]], None],
    prompts: list[PromptCall],
    stamp: dict[str, Any],
    include_usage: bool,
    cost: Cost | None,
) -> AsyncGenerator[bytes, None]:
    """SSE bytes: ``held`` and the rest of ``chunks`` as ``text_completion`` events, the
    usage chunk if asked, then ``[DONE]`` (or an ``error`` event)."""
    usage = UsageTotal()

    async def every_chunk() -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
        for item in held:
            yield item
        async for item in chunks:
            yield item

    try:
        async for i, chunk in every_chunk():
            usage.add(chunk.get("usage"))
            shaped = [prompts[i].shaper.streamed(c) for c in chunk.get("choices") or ()]
            choices = [c for c in shaped if c is not None]
            if choices:
                event = {**stamp, "object": "text_completion", "choices": choices}
                yield b"data: " + orjson.dumps(event) + b"\n\n"
        if include_usage and usage.seen:
            usage_body = usage.body(stamp["model"], cost)
            event = {**stamp, "object": "text_completion", "choices": [], "usage": usage_body}
            yield b"data: " + orjson.dumps(event) + b"\n\n"
    except ShipwayError as error:
        # Headers are gone already; OpenAI clients raise on an `error` event.
        yield b"data: " + orjson.dumps(error.to_dict()) + b"\n\n"
        return
    finally:
        await chunks.aclose()
    yield b"data: [DONE]\n\n"

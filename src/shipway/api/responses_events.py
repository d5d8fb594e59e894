"""A chat stream as OpenAI's typed Responses events.

    response.created → response.in_progress → for each item: output_item.added →
    (content_part.added → output_text.delta … → output_text.done → content_part.done)
    | (function_call_arguments.delta … → function_call_arguments.done) → output_item.done
    → response.completed or response.incomplete; an error after the first byte:
    error → response.failed

Every event carries its ``sequence_number``. An item is closed when the next one starts, as
OpenAI's own streams do.
"""

from __future__ import annotations

from typing import Any

from shipway.api.responses_output import (
    INCOMPLETE,
    ResponseHead,
    call_item,
    failure_events,
    logprob,
    message_item,
    responses_usage,
    text_part,
)
from shipway.errors import ShipwayError

__all__ = ["EventStream"]


class EventStream:
    """Turns one chat stream (index-0 choice) into the Responses events, in order."""

    def __init__(self, head: ResponseHead) -> None:
        self.head = head
        self._sequence = 0
        self._output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}
        self._usage: dict[str, Any] | None = None
        self._finish: str | None = None

    @property
    def chat_usage(self) -> dict[str, Any]:
        """The chat stream's usage, as the backend reported it (for ``usage.cost``)."""
        return self._usage or {}

    def start(self) -> list[dict[str, Any]]:
        response = self.head.response("in_progress", [])
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                logprobs = (choice.get("logprobs") or {}).get("content") or ()
                events += self._text("output_text", delta["content"], logprobs)
            if delta.get("refusal"):
                events += self._text("refusal", delta["refusal"], ())
            for call in delta.get("tool_calls") or ():
                events += self._call_delta(call)
            self._finish = choice.get("finish_reason") or self._finish
        return events

    def finish(self) -> list[dict[str, Any]]:
        incomplete = INCOMPLETE.get(self._finish or "")
        status = "completed" if incomplete is None else "incomplete"
        events = [] if self._output else self._text("output_text", "", ())  # never no output
        events += self._close(status)
        response = self.head.response(
            status, self._output, responses_usage(self._usage), incomplete=incomplete
        )
        return [*events, self._event(f"response.{status}", response=response)]

    def fail(self, error: ShipwayError) -> list[dict[str, Any]]:
        """After the first byte an error can only be told in the stream: ``error``, then
        ``response.failed`` with what was generated so far."""
        failed = self.head.response("failed", self._output)
        events = failure_events(failed, error, self._sequence)
        self._sequence += len(events)
        return events

    # -- items ----------------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _add(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close("completed")
        self._open = item
        self._output.append(item)
        added = {**item, "content": []} if item["type"] == "message" else dict(item)
        return [
            *events,
            self._event("response.output_item.added", output_index=self._index, item=added),
        ]

    @property
    def _index(self) -> int:
        return len(self._output) - 1

    def _text(self, kind: str, text: str, logprobs: Any) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        item = self._open
        if item is None or item["type"] != "message":
            number = sum(1 for i in self._output if i["type"] == "message")
            item_id = f"msg_{self.head.request_id}" + (f"_{number}" if number else "")
            item = message_item(item_id, "in_progress", [])
            events += self._add(item)
        parts = item["content"]
        if not parts or parts[-1]["type"] != kind:
            part = text_part("", []) if kind == "output_text" else {"type": kind, kind: ""}
            parts.append(part)
            events.append(
                self._event("response.content_part.added", **self._where(), part=dict(part))
            )
        part = parts[-1]
        field_name = "text" if kind == "output_text" else "refusal"
        part[field_name] += text
        delta: dict[str, Any] = {"delta": text}
        if kind == "output_text":
            entries = [logprob(entry) for entry in logprobs]
            part["logprobs"] += entries
            delta["logprobs"] = [_delta_logprob(entry) for entry in entries]
        events.append(self._event(f"response.{kind}.delta", **self._where(), **delta))
        return events

    def _call_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            name = function.get("name") or ""
            item = self._calls[index] = call_item(
                self.head, index, call.get("id"), name, "in_progress"
            )
            events += self._add(item)
        elif function.get("name"):
            item["name"] += function["name"]
        arguments = function.get("arguments") or ""
        if arguments:
            item["arguments"] += arguments
            where = {"item_id": item["id"], "output_index": self._output.index(item)}
            events.append(
                self._event("response.function_call_arguments.delta", **where, delta=arguments)
            )
        return events

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {
            "item_id": self._open["id"],
            "output_index": self._index,
            "content_index": len(self._open["content"]) - 1,
        }

    def _close(self, status: str) -> list[dict[str, Any]]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = self._output.index(item)
        events = []
        if item["type"] == "message":
            for j, part in enumerate(item["content"]):
                where = {"item_id": item["id"], "output_index": index, "content_index": j}
                if part["type"] == "output_text":
                    done = {"text": part["text"], "logprobs": part["logprobs"]}
                    events.append(self._event("response.output_text.done", **where, **done))
                else:
                    refusal = part["refusal"]
                    events.append(self._event("response.refusal.done", **where, refusal=refusal))
                events.append(self._event("response.content_part.done", **where, part=dict(part)))
        else:
            done = {"item_id": item["id"], "output_index": index, "name": item["name"]}
            events.append(
                self._event(
                    "response.function_call_arguments.done", **done, arguments=item["arguments"]
                )
            )
        item["status"] = status
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events


def _delta_logprob(entry: dict[str, Any]) -> dict[str, Any]:
    """A delta's logprob: the streaming schema has no ``bytes``."""
    return {
        "token": entry["token"],
        "logprob": entry["logprob"],
        "top_logprobs": [
            {"token": top["token"], "logprob": top["logprob"]} for top in entry["top_logprobs"]
        ],
    }

"""Batch input files: every problem that would fail a line on every run is a 400 naming the line."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shipway.batches.lines import parse_input
from shipway.errors import InvalidRequest

CHAT = "/v1/chat/completions"


def _line(custom_id: str = "a", **overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    line.update(overrides)
    return line


def _jsonl(*lines: Any) -> bytes:
    return b"\n".join(line if isinstance(line, bytes) else orjson.dumps(line) for line in lines)


def _models(model: str, needs: str) -> str | None:
    if model == "embedder" and needs == "chat":
        return "model 'embedder' does not support chat"
    return None if model in ("m", "embedder") else f"model {model!r} does not exist"


def _parse(content: bytes, endpoint: str = CHAT, max_lines: int = 100) -> Any:
    return parse_input(content, endpoint=endpoint, max_lines=max_lines, check_model=_models)


def _refused(content: bytes, **kwargs: Any) -> str:
    with pytest.raises(InvalidRequest) as caught:
        _parse(content, **kwargs)
    assert caught.value.status == 400
    assert caught.value.param == "input_file_id"
    return caught.value.message


def test_good_lines_keep_their_file_line_numbers_and_bodies() -> None:
    content = _jsonl(_line("a"), b"", b"   ", _line("b")) + b"\n"
    lines = _parse(content)
    assert [(line.line_no, line.custom_id, line.model) for line in lines] == [
        (1, "a", "m"),
        (4, "b", "m"),
    ]
    assert lines[0].request == _line()["body"]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        (b'{"custom_id": "b", "method": ', "line 2 of the input file: not valid JSON"),
        (b"\xff\xfe", "line 2 of the input file: not valid UTF-8"),
        (b"[1, 2]", "line 2 of the input file: expected a JSON object, got list"),
        (orjson.dumps(_line("b", extra=1)), "line 2 of the input file: unknown field(s) extra"),
        (orjson.dumps(_line("")), "line 2 of the input file: custom_id is missing"),
        (orjson.dumps(_line("x" * 513)), "custom_id is longer than 512 characters"),
        (orjson.dumps(_line("b", method="GET")), "line 2 of the input file: method must be"),
        (
            orjson.dumps(_line("b", url="/v1/embeddings")),
            "line 2 of the input file: url '/v1/embeddings' is not the batch's endpoint "
            "'/v1/chat/completions'",
        ),
        (orjson.dumps(_line("b", body="hi")), "line 2 of the input file: body is missing"),
        (orjson.dumps(_line("b", body={"messages": []})), "body.model is missing"),
        (
            orjson.dumps(_line("b", body={"model": "gpt-9", "messages": []})),
            "line 2 of the input file: model 'gpt-9' does not exist",
        ),
        (
            orjson.dumps(_line("b", body={"model": "embedder", "messages": []})),
            "line 2 of the input file: model 'embedder' does not support chat",
        ),
        (
            orjson.dumps(_line("b", body={"model": "m", "messages": [], "stream": True})),
            "line 2 of the input file: body.stream is not supported in a batch",
        ),
    ],
)
def test_a_bad_line_is_named_with_its_problem(bad_line: bytes, expected: str) -> None:
    assert expected in _refused(_jsonl(_line("a"), bad_line, _line("c")))


def test_a_repeated_custom_id_names_both_lines() -> None:
    message = _refused(_jsonl(_line("a"), _line("b"), _line("a")))
    assert message == (
        "line 3 of the input file: custom_id 'a' is used by line 1 too; each request needs "
        "its own custom_id"
    )


def test_more_lines_than_the_limit_are_refused_naming_the_setting() -> None:
    content = _jsonl(*(_line(str(i)) for i in range(4)))
    assert len(_parse(content, max_lines=4)) == 4
    message = _refused(content + b"\n" + orjson.dumps(_line("5")), max_lines=4)
    assert "more than 4 requests (batches.max_lines)" in message


def test_an_empty_file_is_refused() -> None:
    assert "has no requests" in _refused(b"\n  \n")


def test_embeddings_lines_are_checked_against_their_endpoint() -> None:
    line = _line("e", url="/v1/embeddings", body={"model": "embedder", "input": "hi"})
    assert _parse(_jsonl(line), endpoint="/v1/embeddings")[0].model == "embedder"
    assert "not the batch's endpoint" in _refused(_jsonl(line), endpoint=CHAT)

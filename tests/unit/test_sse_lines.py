from collections.abc import AsyncIterator

import pytest

from shipway.backends.openai_http import sse_lines
from shipway.errors import UpstreamError


async def _pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _lines(*parts: bytes) -> list[bytes]:
    return [line async for line in sse_lines(_pieces(*parts), "m")]


async def test_lines_split_across_pieces_are_joined() -> None:
    assert await _lines(b'data: {"a"', b": 1}\r\n\r\ndata: [DO", b"NE]\n\n") == [
        b'data: {"a": 1}',
        b"",
        b"data: [DONE]",
        b"",
    ]


async def test_many_lines_in_one_piece_and_a_tail_without_newline() -> None:
    assert await _lines(b"a\nb\nc\n", b"tail") == [b"a", b"b", b"c", b"tail"]


async def test_a_huge_line_arrives_whole() -> None:
    big = b"x" * 3_000_000
    parts = [big[i : i + 65536] for i in range(0, len(big), 65536)]
    assert await _lines(b"data: ", *parts, b"\n") == [b"data: " + big]


async def test_an_endless_line_is_refused() -> None:
    with pytest.raises(UpstreamError, match="over 16 MiB"):
        await _lines(*([b"y" * 1_048_576] * 17))

from __future__ import annotations

import pytest

from modelgate.backends.sse import TruncatedEvent, iter_sse


class Blocks:
    def __init__(self, *blocks: bytes) -> None:
        self.blocks = blocks

    async def iter_any(self):
        for b in self.blocks:
            yield b


async def collect(*blocks: bytes) -> list[tuple[bytes, bool]]:
    return [x async for x in iter_sse(Blocks(*blocks))]


async def test_events_split_across_reads_and_more_flag() -> None:
    got = await collect(b"data: a\n\ndata: b\n", b"\ndata: c\n\n")
    assert got == [(b"a", False), (b"b", True), (b"c", False)]


async def test_crlf_comments_fields_multiline() -> None:
    got = await collect(b": keep-alive\r\n\r\nevent: x\r\nid: 1\r\ndata: one\r\ndata: two\r\n\r\n")
    assert got == [(b"one\ntwo", False)]


async def test_done_without_blank_line_is_fine_but_a_cut_event_is_not() -> None:
    assert await collect(b"data: a\n\ndata: [DONE]\n") == [(b"a", False), (b"[DONE]", False)]
    with pytest.raises(TruncatedEvent):
        await collect(b'data: {"choices": [')

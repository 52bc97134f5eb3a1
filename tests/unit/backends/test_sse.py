from __future__ import annotations

import pytest

from modelgate.backends.sse import EventTooLarge, SSESplitter, TruncatedEvent, iter_sse


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


async def test_a_crlf_split_between_reads_ends_the_line_once() -> None:
    # the CR ends one read and its LF starts the next: still one event of two lines
    assert await collect(b"data: a\r", b"\ndata: b\r\n\r\n") == [(b"a\nb", False)]
    # CR-only line endings still end an event in the read that completes it
    assert await collect(b"data: a\r\r") == [(b"a", False)]
    assert await collect(b"data: a\r", b"\r") == [(b"a", False)]
    assert await collect(b"data: a\r\n\r\ndata: [DONE]\r") == [(b"a", False), (b"[DONE]", False)]


def test_an_event_that_never_ends_is_refused_not_buffered() -> None:
    split = SSESplitter(limit=64)
    assert split.feed(b"data: one\n\ndata: " + b"x" * 50) == [b"one"]  # 56 bytes held: under the limit
    with pytest.raises(EventTooLarge):
        split.feed(b"x" * 10)
    assert split.end() == []  # nothing kept after the refusal


def test_events_up_to_the_limit_pass() -> None:
    split = SSESplitter(limit=64)
    event = b"data: " + b"y" * 58  # exactly the limit, split over reads
    assert split.feed(event[:30]) == []
    assert split.feed(event[30:]) == []
    assert split.feed(b"\n\n") == [b"y" * 58]


def test_a_long_event_over_many_reads_is_whole() -> None:
    split = SSESplitter()
    assert split.feed(b'data: {"text": "') == []
    for _ in range(1000):  # reads with no line end: kept aside, joined once
        assert split.feed(b"x" * 100) == []
    assert split.feed(b'"}\n\ndata: next\n\n') == [b'{"text": "' + b"x" * 100_000 + b'"}', b"next"]


def test_reads_without_line_ends_still_complete_the_last_event() -> None:
    split = SSESplitter()
    assert split.feed(b"data: [DO") == [] and split.feed(b"NE]") == []
    assert split.end() == [b"[DONE]"]
    split = SSESplitter()  # CR-only line ends around such a read
    assert split.feed(b"data: a\r") == [] and split.feed(b"data: b") == []
    assert split.feed(b"\r\r") == [b"a\nb"]

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


def _reference(stream: bytes) -> list[bytes]:
    """The SSE rules read plainly: events end at a blank line; an event's data is its
    ``data`` lines joined by newlines (one leading space dropped); others ignored."""
    out = []
    for event in stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n\n")[:-1]:
        datas = [
            line[6:] if line[:6] == b"data: " else line[5:]
            for line in event.split(b"\n")
            if line.startswith(b"data:")
        ]
        if datas:
            out.append(b"\n".join(datas))
    return out


def test_the_splitter_reads_any_mix_of_events_as_the_rules_say() -> None:
    # plain one-line events (the fast path) mixed at random with the shapes that
    # must take the general one: comments, other fields, multi-line data, no space,
    # CRLF, empty data, extra blank lines; cut into reads at random places
    import random

    rng = random.Random(7)
    shapes = [
        b'data: {"a": 1}\n\n',
        b"data: [DONE]\n\n",
        b"data: \n\n",
        b"data:x\n\n",
        b": comment\n\n",
        b"event: e\ndata: y\n\n",
        b"data: one\ndata: two\n\n",
        b"data: crlf\r\n\r\n",
        b"\n",
    ]
    for _ in range(500):
        stream = b"".join(rng.choice(shapes[:1] * 6 + shapes) for _ in range(rng.randint(1, 12)))
        cuts = sorted(rng.sample(range(len(stream) + 1), k=min(3, len(stream) + 1)))
        split, got, last = SSESplitter(), [], 0
        for cut in [*cuts, len(stream)]:
            got += split.feed(stream[last:cut])
            last = cut
        assert got == _reference(stream), stream

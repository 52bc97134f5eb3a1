from __future__ import annotations

import json

import pytest

from modelgate.backends.openai_stream import EventStream
from modelgate.errors import UpstreamDisconnected, UpstreamError


class Reads:
    """An upstream response at the seam: its content's reads, then EOF."""

    def __init__(self, *reads: bytes) -> None:
        self.reads = list(reads)
        self.content = self
        self.closed = False

    async def readany(self) -> bytes:
        return self.reads.pop(0) if self.reads else b""

    def close(self) -> None:
        self.closed = True

    async def open(self) -> Reads:
        return self


def ev(delta: dict, finish: str | None = None, **extra) -> bytes:
    body = {
        "id": "x",
        "model": "up",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def run(*reads: bytes, n: int = 1, rename=None) -> list:
    return [
        c async for c in EventStream(where="up", chat=True, n=n, rename=rename).chunks(Reads(*reads).open)
    ]


async def test_events_of_one_read_travel_as_one_chunk_with_their_bytes() -> None:
    read = ev({"role": "assistant", "content": ""}) + ev({"content": "a"}) + ev({"content": "b"})
    chunks = await run(read, ev({}, "stop") + b"data: [DONE]\n\n")
    assert [(c.text, c.role, c.finish_reason) for c in chunks] == [
        ("ab", "assistant", None),
        ("", None, "stop"),
    ]
    assert chunks[0].raw == read  # forwarded byte for byte


async def test_separate_reads_are_never_held_back() -> None:
    chunks = await run(ev({"content": "a"}), ev({"content": "b"}), ev({}, "stop"))
    assert [c.text for c in chunks] == ["a", "b", ""]
    assert not any(c.buffered for c in chunks)


async def test_tool_calls_and_usage_are_not_merged_and_model_is_renamed() -> None:
    tool = ev({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": "{}"}}]})
    usage = b'data: {"id": "x", "model": "up", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}\n\n'
    chunks = await run(
        ev({"content": "a"}) + tool + ev({}, "tool_calls") + usage,
        rename=lambda raw: raw.replace(b'"model": "up"', b'"model": "client"'),
    )
    assert [c.tool_calls != () for c in chunks] == [False, True, False, False]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5
    assert all(b'"up"' not in c.raw for c in chunks if c.raw)


async def test_content_before_a_failure_still_comes_out_then_the_error() -> None:
    err = b'data: {"error": {"message": "boom", "type": "x", "code": 500}}\n\n'
    got = []
    with pytest.raises(UpstreamError):
        async for c in EventStream(where="up", chat=True, n=1, rename=None).chunks(
            Reads(ev({"content": "a"}) + err).open
        ):
            got.append(c)
    assert [c.text for c in got] == ["a"]
    with pytest.raises(UpstreamDisconnected):
        await run(ev({"content": "a"}) + b'data: {"choi')
    with pytest.raises(UpstreamDisconnected, match="before a finish reason"):
        await run(ev({"content": "a"}) + b"data: [DONE]\n\n")


async def test_a_read_parsed_whole_never_shifts_events() -> None:
    # one event holding two JSON values would shift every later event in a one-call
    # parse of the read: it must be found and refused as malformed instead
    got = []
    with pytest.raises(UpstreamError, match="malformed stream event"):
        async for c in EventStream(where="up", chat=True, n=1, rename=None).chunks(
            Reads(ev({"content": "a"}) + b'data: {"x": 1},{"y": 2}\n\n' + ev({}, "stop")).open
        ):
            got.append(c)
    assert [c.text for c in got] == ["a"]
    with pytest.raises(UpstreamError, match="malformed stream event"):
        await run(ev({"content": "a"}) + b"data: [1]\n\n" + ev({}, "stop"))


async def test_done_ends_the_stream_and_the_last_chunk_says_the_end_is_here() -> None:
    chunks = await run(ev({"content": "a"}) + ev({}, "stop") + b"data: [DONE]\n\n" + ev({"content": "late"}))
    assert [(c.text, c.finish_reason) for c in chunks] == [("a", "stop")]
    assert chunks[-1].buffered  # nothing to wait for: a writer may join it with the end


async def test_the_upstream_response_is_closed_however_the_relay_ends() -> None:
    def relay(reads: Reads):
        return EventStream(where="up", chat=True, n=1, rename=None).chunks(reads.open)

    done = Reads(ev({"content": "a"}) + ev({}, "stop") + b"data: [DONE]\n\n")
    assert [c.text async for c in relay(done)] == ["a"] and done.closed
    failed = Reads(ev({"content": "a"}) + b'data: {"choi')
    with pytest.raises(UpstreamDisconnected):
        _ = [c async for c in relay(failed)]
    assert failed.closed
    left = Reads(ev({"content": "a"}), ev({"content": "b"}), ev({}, "stop"))
    gen = relay(left)
    assert (await anext(gen)).text == "a" and not left.closed
    await gen.aclose()  # the client went away: the upstream request is aborted
    assert left.closed and left.reads  # nothing more was read

from __future__ import annotations

import asyncio
import io
import json

from modelgate.logs import AccessLog


async def test_access_lines_are_buffered_then_flushed_in_order() -> None:
    out = io.StringIO()
    log = AccessLog(out)
    log.write({"request_id": "a", "status": 200})
    log.write({"request_id": "b", "status": 404})
    assert out.getvalue() == ""  # not yet: one write for many lines
    await asyncio.sleep(AccessLog.FLUSH_S * 2)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(x["request_id"], x["status"]) for x in lines] == [("a", 200), ("b", 404)]
    assert lines[0]["logger"] == "modelgate.access" and lines[0]["ts"].endswith("Z")


def test_no_loop_writes_at_once() -> None:
    out = io.StringIO()
    log = AccessLog(out)
    log.write({"request_id": "x"})  # no running loop: written immediately
    assert out.getvalue().count("\n") == 1


async def test_a_full_buffer_is_written_at_once() -> None:
    out = io.StringIO()
    log = AccessLog(out)
    n = 0
    while not out.getvalue():  # buffered up to MAX_BYTES, then written without waiting
        log.write({"i": n})
        n += 1
    assert len(out.getvalue()) >= AccessLog.MAX_BYTES
    assert [json.loads(x)["i"] for x in out.getvalue().splitlines()] == list(range(n))
    log.flush()


async def test_lines_go_to_a_text_streams_bytes_in_order(tmp_path) -> None:
    path = tmp_path / "log"
    with open(path, "w") as stream:
        log = AccessLog(stream)
        stream.write("before\n")  # through the text layer, still unflushed
        log.write({"request_id": "a"})
        log.flush()
        stream.write("after\n")
    lines = path.read_text().splitlines()
    assert lines[0] == "before" and json.loads(lines[1])["request_id"] == "a" and lines[2] == "after"

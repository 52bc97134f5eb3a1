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


def test_full_buffer_and_no_loop_write_at_once() -> None:
    out = io.StringIO()
    log = AccessLog(out)
    log.write({"request_id": "x"})  # no running loop: written immediately
    assert out.getvalue().count("\n") == 1
    for i in range(AccessLog.MAX_LINES):
        log.write({"i": i})
    assert out.getvalue().count("\n") == 1 + AccessLog.MAX_LINES

"""Structured JSON logs.  No prompts, no keys: callers log ids, sizes and timings."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import orjson

_STD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class AccessLog:
    """One JSON line per request.  The access log is on the hot path: lines are
    buffered and written together at most ``FLUSH_S`` later (like nginx's
    ``access_log buffer=``), the timestamp's seconds are formatted once per second,
    and the app flushes what is left when it stops.

    The buffer is one bytearray that each line is appended to, not a list of lines:
    holding hundreds of line objects until the flush made every line cost 3.8 µs
    instead of 1.6 µs (fresh, cache-cold memory for each one)."""

    FLUSH_S = 0.1
    MAX_BYTES = 64 * 1024

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._binary = getattr(self._stream, "buffer", None)  # a text stream's bytes below
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def write(self, fields: dict[str, Any]) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = {
            "ts": f"{self._stamp}.{int((now - second) * 1000):03d}Z",
            "level": "info",
            "logger": "modelgate.access",
            "msg": "request",
            **fields,
        }
        buf = self._buf
        buf += orjson.dumps(line)
        buf += b"\n"
        if len(buf) >= self.MAX_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.FLUSH_S, self.flush)
            except RuntimeError:  # no loop: write at once
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            if self._binary is not None:
                self._stream.flush()  # whatever went through the text layer goes first
                self._binary.write(data)
                self._binary.flush()
            else:
                self._stream.write(data.decode())
                self._stream.flush()

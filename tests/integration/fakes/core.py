"""Fault-injecting fake upstreams: shared plumbing.

A ``Faults`` plan says how the next answers misbehave (set it directly, or with
``POST /_fault`` when the server runs in a subprocess); ``Stats`` counts what the
server saw, including generations the client abandoned.  ``FakeServer`` runs an
app in-process on 127.0.0.1 and can be killed (connections reset) and restarted on
the same port; ``ProcessServer`` runs one in a subprocess, killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import web

MODES = (
    "ok",  # a normal answer
    "status",  # answer `status` with `body` (JSON) and `headers`
    "html502",  # a proxy's HTML 502 page
    "truncated_json",  # 200 with a JSON body cut in the middle
    "bad_sse",  # a stream whose event `after` is not JSON
    "cut",  # stream `after` tokens, then close cleanly without an end
    "error_then_done",  # stream `after` tokens, then an error event (then [DONE] where the protocol has it)
    "hang",  # accept, then sleep `delay` before the first byte
    "stall",  # stream `after` tokens, then sleep `delay`
    "reset",  # stream `after` tokens, then reset the connection (RST)
)


@dataclass
class Faults:
    mode: str = "ok"
    rate: float = 1.0  # share of requests the fault applies to
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    after: int = 0
    delay: float = 0.0
    tokens: int = 5  # tokens in a normal answer
    token_delay: float = 0.0
    health: int = 200
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # fields of /info to answer differently

    def update(self, raw: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        for key, value in raw.items():
            if key not in names:
                raise KeyError(key)
            setattr(self, key, value)
        if self.mode not in MODES:
            raise ValueError(self.mode)


@dataclass
class Stats:
    requests: int = 0
    generations: int = 0
    active: int = 0  # generations still running
    abandoned: int = 0  # generations whose client went away mid-answer
    completed: int = 0
    probes: int = 0
    tokenized: int = 0  # /tokenize calls
    abandon_times: list[float] = field(default_factory=list)  # time.time() when noticed


class FakeState:
    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.stats = Stats()
        self.rng = random.Random(self.faults.seed)
        self.seen_bodies: list[Any] = []

    def fault(self) -> str:
        f = self.faults
        if f.mode == "ok" or (f.rate < 1.0 and self.rng.random() >= f.rate):
            return "ok"
        return f.mode


def reset_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def control_routes(app: web.Application, state: FakeState) -> None:
    async def set_fault(request: web.Request) -> web.Response:
        state.faults.update(await request.json())
        return web.json_response(asdict(state.faults))

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(asdict(state.stats))

    app.router.add_post("/_fault", set_fault)
    app.router.add_get("/_stats", get_stats)


class FakeServer:
    """An app on 127.0.0.1 in this process; ``kill()`` resets every connection."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._transports: set[asyncio.Transport] = set()

        @web.middleware
        async def track(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.transport is not None:
                self._transports.add(request.transport)  # type: ignore[arg-type]
            return await handler(request)

        app.middlewares.append(track)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeServer:
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=0.2, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def kill(self) -> None:
        """Stop listening and reset every open connection, like a crashed process."""
        for t in list(self._transports):
            sock = t.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            t.abort()
        self._transports.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self) -> None:
        self.app = _fresh_copy(self.app)
        await self.start()

    async def stop(self) -> None:
        await self.kill()


def _fresh_copy(app: web.Application) -> web.Application:
    """An aiohttp app can be started once: build a new one with the same routes and state."""
    factory = app.get(FACTORY)
    if factory is None:
        raise RuntimeError("restart needs an app made by a fake's make_app")
    return factory()


FACTORY: web.AppKey[Any] = web.AppKey("fake_factory", object)


class ProcessServer:
    """A fake in a subprocess (``python -m``-free: runs ``run.py``); killed with SIGKILL by PID."""

    def __init__(self, kind: str, *, port: int = 0, faults: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.port = port
        self.faults = faults or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> ProcessServer:
        import json

        script = os.path.join(os.path.dirname(__file__), "run.py")
        args = [
            sys.executable,
            script,
            self.kind,
            "--port",
            str(self.port),
            "--faults",
            json.dumps(self.faults),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT ") or time.monotonic() > deadline:
            self.kill()
            raise RuntimeError(f"fake {self.kind} did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> ProcessServer:
        self.kill()
        return self.start()

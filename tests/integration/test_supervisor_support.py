"""Helpers for the supervisor's integration tests (no tests here).

Run as a script, this file is a tiny worker: ``/health``, ``/info``, TGI's
``/generate`` and OpenAI's ``/v1/completions`` on 127.0.0.1:<port>, used until
the real ``modelgate worker`` can stand in (see ``worker_command``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

FAKE_WORKER = str(Path(__file__).resolve())


def worker_command(port: int, *extra: str) -> list[str]:
    return [sys.executable, FAKE_WORKER, "--port", str(port), *extra]


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat[stat.rfind(")") + 2 :].startswith(("Z", "X"))


def wait_until(pred: Any, timeout_s: float, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step_s)
    return bool(pred())


async def async_wait_until(pred: Any, timeout_s: float, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step_s)
    return bool(pred())


def _serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    started = time.monotonic()

    async def health(_: web.Request) -> web.Response:
        if args.unhealthy_after is not None and time.monotonic() - started > args.unhealthy_after:
            return web.json_response({"error": "sick"}, status=503)
        return web.json_response({"ok": True, "pid": os.getpid()})

    async def info(_: web.Request) -> web.Response:
        return web.json_response({"model_id": "fake", "pid": os.getpid()})

    async def generate(_: web.Request) -> web.Response:
        return web.json_response({"generated_text": "ok", "details": {"finish_reason": "length"}})

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {"index": 0, "text": f"pid {os.getpid()}", "finish_reason": "length", "logprobs": None}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            }
        )

    async def models(_: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": args.model_id, "object": "model", "owned_by": "x"}]}
        )

    app = web.Application()
    for prefix in ("", "/v1"):
        app.router.add_get(f"{prefix}/health", health)
        app.router.add_get(f"{prefix}/models", models)
        app.router.add_post(f"{prefix}/completions", completions)
    app.router.add_get("/info", info)
    app.router.add_post("/generate", generate)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"fake worker pid {os.getpid()} on port {args.port}", flush=True)

    async def main() -> None:
        await asyncio.sleep(args.startup_delay)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, reuse_address=True).start()
        if args.exit_after is not None:
            await asyncio.sleep(args.exit_after)
            print(f"fake worker exiting with {args.exit_code}", flush=True)
            os._exit(args.exit_code)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    asyncio.run(main())


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-id", default="m")
    p.add_argument("--startup-delay", type=float, default=0.0)
    p.add_argument("--exit-after", type=float)
    p.add_argument("--exit-code", type=int, default=1)
    p.add_argument("--unhealthy-after", type=float)
    p.add_argument("--ignore-term", action="store_true")
    _serve(p.parse_args())

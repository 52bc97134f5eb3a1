"""SupervisedEndpoint's loop against an in-process Runner and probe (the seam)."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelgate.config import LaunchSpec
from modelgate.supervisor.endpoint import SupervisedEndpoint
from modelgate.supervisor.errors import LaunchFailed
from modelgate.supervisor.state import Backoff, Lifecycle, Thresholds


class FakeRunner:
    kind = "process"

    def __init__(self, *, fail_starts: int = 0) -> None:
        self.fail_starts = fail_starts
        self.starts = 0
        self.stops = 0
        self.running = False
        self.exit: asyncio.Future[int | None] | None = None

    @property
    def ident(self) -> str | None:
        return str(self.starts) if self.running else None

    async def start(self) -> str:
        self.starts += 1
        if self.starts <= self.fail_starts:
            raise LaunchFailed(f"no such command (try {self.starts})")
        self.running = True
        self.exit = asyncio.get_running_loop().create_future()
        return str(self.starts)

    def crash(self, code: int) -> None:
        assert self.exit is not None
        self.running = False
        if not self.exit.done():
            self.exit.set_result(code)

    async def wait(self) -> int | None:
        assert self.exit is not None
        return await asyncio.shield(self.exit)

    async def stop(self, timeout_s: float) -> int | None:
        self.stops += 1
        if self.running:
            self.crash(-15)
        return -15

    async def logs(self, lines: int) -> list[str]:
        return [f"log of child {self.starts}"]


class Probe:
    def __init__(self) -> None:
        self.healthy = True
        self.calls = 0

    async def __call__(self, url: str) -> bool:
        self.calls += 1
        return self.healthy


def endpoint(runner: FakeRunner, probe: Probe, max_restarts: int = 3) -> SupervisedEndpoint:
    spec = LaunchSpec(kind="process", command=("x",), max_restarts=max_restarts, start_timeout_s=0.5)
    lc = Lifecycle(
        Backoff(0.01, 0.04, 0.0), Thresholds(degraded_after=2, restart_after=3, max_restarts=max_restarts)
    )
    return SupervisedEndpoint(
        "http://e", "m", spec, runner, lc, probe, interval_s=0.01, start_poll_s=0.01, clock=time.monotonic
    )


async def until(pred, timeout_s: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not pred():
            await asyncio.sleep(0.005)


async def test_exit_restarts_with_backoff_and_readiness_returns() -> None:
    runner, probe = FakeRunner(), Probe()
    ep = endpoint(runner, probe)
    task = asyncio.create_task(ep.run())
    try:
        await until(lambda: ep.state == "ready")
        runner.crash(137)
        await until(lambda: ep.state == "restarting")
        assert ep.info()["last_exit_code"] == 137 and ep.info()["pid"] is None
        await until(lambda: ep.state == "ready" and runner.starts == 2)
        assert ep.info()["restarts"] == 1 and ep.info()["pid"] == "2"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ep.stop()
    assert ep.state == "stopped"


async def test_unhealthy_goes_degraded_then_is_stopped_and_restarted() -> None:
    runner, probe = FakeRunner(), Probe()
    ep = endpoint(runner, probe)
    task = asyncio.create_task(ep.run())
    try:
        await until(lambda: ep.state == "ready")
        probe.healthy = False
        await until(lambda: runner.stops == 1)
        states = [s for _, s in ep.lc.transitions]
        assert states[:3] == ["ready", "degraded", "restarting"]
        probe.healthy = True
        await until(lambda: ep.state == "ready" and runner.starts == 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_launch_failures_end_failed_with_the_reason() -> None:
    runner, probe = FakeRunner(fail_starts=99), Probe()
    ep = endpoint(runner, probe, max_restarts=2)
    await asyncio.wait_for(ep.run(), 3)  # returns once failed
    assert ep.state == "failed" and runner.starts == 3
    assert ep.info()["last_logs"] == ["no such command (try 3)"]


async def test_never_ready_hits_start_timeout() -> None:
    runner, probe = FakeRunner(), Probe()
    probe.healthy = False
    ep = endpoint(runner, probe, max_restarts=0)
    await asyncio.wait_for(ep.run(), 3)
    assert ep.state == "failed" and runner.stops == 1
    assert "start_timeout_s" in (ep.lc.last_reason or "")


@pytest.mark.parametrize("code", [0, 1, -9])
async def test_any_exit_code_is_recorded(code: int) -> None:
    runner, probe = FakeRunner(), Probe()
    ep = endpoint(runner, probe, max_restarts=0)
    task = asyncio.create_task(ep.run())
    await until(lambda: ep.state == "ready")
    runner.crash(code)
    await asyncio.wait_for(task, 3)
    assert ep.state == "failed" and ep.info()["last_exit_code"] == code
    assert ep.info()["last_logs"] == ["log of child 1"]


async def test_unreachable_docker_fails_container_endpoints_not_the_gateway(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from modelgate.config import build_config
    from modelgate.supervisor.supervisor import Supervisor

    launch = {"kind": "container", "image": "busybox", "max_restarts": 1, "backoff_base_s": 0.01}
    raw = {
        "supervisor": {
            "docker_host": f"unix://{tmp_path}/no.sock",
            "state_dir": str(tmp_path),
            "instance": "u",
        },
        "models": [
            {"id": "m", "backend": "openai", "endpoints": [{"url": "http://127.0.0.1:9", "launch": launch}]}
        ],
    }
    sup = Supervisor(build_config(raw, source="t", environ={}))
    await sup.start()  # does not raise
    try:
        ep = sup.lifecycle["http://127.0.0.1:9"]
        await until(lambda: ep.state == "failed", 10)
        assert "unreachable" in ep.info()["last_logs"][0]
    finally:
        await sup.stop()

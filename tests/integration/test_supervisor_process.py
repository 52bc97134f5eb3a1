"""The supervisor with real worker subprocesses: kill, restart, crash loop, orphans, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_supervisor_support import async_wait_until, pid_alive, worker_command
from tests.support.net import free_port

from modelgate.config import Config, build_config
from modelgate.supervisor.ownership import proc_start_time
from modelgate.supervisor.supervisor import Supervisor


def make_config(tmp_path: Path, launches: list[dict[str, Any]], **supervisor: Any) -> Config:
    endpoints = []
    for launch in launches:
        port = launch.pop("port")
        endpoints.append({"url": f"http://127.0.0.1:{port}", "launch": {"kind": "process", **launch}})
    raw = {
        "supervisor": {
            "state_dir": str(tmp_path / "state"),
            "instance": "test",
            "health_interval_s": 0.1,
            "health_timeout_s": 0.5,
            **supervisor,
        },
        "models": [{"id": "m", "backend": "openai", "endpoints": endpoints}],
    }
    return build_config(raw, source="test", environ={})


def process_launch(port: int, *extra: str, **kw: Any) -> dict[str, Any]:
    return {"port": port, "command": worker_command(port, *extra), "stop_timeout_s": 2, **kw}


async def test_sigkill_restarts_and_ready_again(tmp_path: Path) -> None:
    port = free_port()
    sup = Supervisor(make_config(tmp_path, [process_launch(port, backoff_base_s=0.05)]))
    url = f"http://127.0.0.1:{port}"
    await sup.start()
    try:
        assert await sup.wait_ready(15)
        ep = sup.lifecycle[url]
        first_pid = int(ep.info()["pid"])
        assert pid_alive(first_pid)
        records = list((tmp_path / "state").glob("test-*.json"))
        assert [json.loads(r.read_text())["pid"] for r in records] == [first_pid]

        t0 = time.monotonic()
        os.kill(first_pid, signal.SIGKILL)
        assert await async_wait_until(lambda: ep.state != "ready", 5)
        assert await async_wait_until(lambda: ep.state == "ready", 15)
        elapsed = time.monotonic() - t0
        info = ep.info()
        assert info["restarts"] == 1
        assert info["last_exit_code"] == -signal.SIGKILL
        assert info["pid"] != first_pid and pid_alive(int(info["pid"]))
        assert [s for _, s in ep.lc.transitions][-2:] == ["starting", "ready"]
        print(f"FIGURE process kill->ready {elapsed:.3f}s")
    finally:
        await sup.stop()
    assert not pid_alive(int(info["pid"]))
    assert list((tmp_path / "state").glob("test-*.json")) == []


async def test_crash_loop_marks_failed_with_backoff_and_logs(tmp_path: Path) -> None:
    port = free_port()
    launch = process_launch(
        port, "--exit-after", "0", "--exit-code", "3", max_restarts=3, backoff_base_s=0.05, backoff_max_s=0.15
    )
    sup = Supervisor(make_config(tmp_path, [launch], backoff_jitter=0.0))
    await sup.start()
    try:
        ep = sup.lifecycle[f"http://127.0.0.1:{port}"]
        assert await async_wait_until(lambda: ep.state == "failed", 20)
        info = ep.info()
        assert info["restarts"] == 3
        assert info["backoff_s"] == [0.05, 0.1, 0.15]  # doubling, capped at backoff_max_s
        assert info["last_exit_code"] == 3
        assert any("exiting with 3" in line for line in info["last_logs"])
        assert info["pid"] is None and info["next_restart_at"] is None
    finally:
        await sup.stop()


async def test_unhealthy_child_is_degraded_then_restarted(tmp_path: Path) -> None:
    port = free_port()
    launch = process_launch(port, "--unhealthy-after", "1.0", backoff_base_s=0.05)
    sup = Supervisor(make_config(tmp_path, [launch], degraded_after=2, restart_after=4))
    await sup.start()
    try:
        ep = sup.lifecycle[f"http://127.0.0.1:{port}"]
        assert await sup.wait_ready(15)
        first_pid = ep.info()["pid"]
        assert await async_wait_until(lambda: ep.lc.restarts >= 1 and ep.state != "restarting", 15)
        states = [s for _, s in ep.lc.transitions]
        assert states[:4] == ["ready", "degraded", "restarting", "starting"]
        assert "health failed 4 times" in (ep.lc.last_reason or "")
        assert not pid_alive(int(first_pid))
    finally:
        await sup.stop()


async def test_stop_escalates_to_sigkill_and_leaves_nothing(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    launches = [process_launch(ports[0], "--ignore-term", stop_timeout_s=0.5), process_launch(ports[1])]
    sup = Supervisor(make_config(tmp_path, launches))
    await sup.start()
    assert await sup.wait_ready(15)
    pids = [int(ep.info()["pid"]) for ep in sup.lifecycle.values()]
    t0 = time.monotonic()
    await sup.stop()
    took = time.monotonic() - t0
    assert not any(pid_alive(p) for p in pids)
    assert 0.4 < took < 5, took  # waited for the TERM-ignoring child, then killed it
    assert {ep.state for ep in sup.lifecycle.values()} == {"stopped"}
    assert list((tmp_path / "state").glob("*.json")) == []


ORPHAN_PARENT = """
import asyncio, sys
from modelgate.config import build_config
from modelgate.supervisor.supervisor import Supervisor
raw = {"supervisor": {"state_dir": sys.argv[1], "instance": "test", "health_interval_s": 0.1},
       "models": [{"id": "m", "backend": "openai", "endpoints": [
           {"url": "http://127.0.0.1:" + sys.argv[2], "launch": {"kind": "process", "command": sys.argv[3:]}}]}]}
async def main():
    sup = Supervisor(build_config(raw, source="t", environ={}))
    await sup.start()
    assert await sup.wait_ready(15)
    print("READY", sup.lifecycle["http://127.0.0.1:" + sys.argv[2]].info()["pid"], flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_orphans_of_a_crashed_run_are_stopped_and_strangers_left_alone(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ORPHAN_PARENT, str(state), str(port), *worker_command(port),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stranger = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
    try:
        assert parent.stdout is not None
        line = (await asyncio.wait_for(parent.stdout.readline(), 20)).decode()
        assert line.startswith("READY"), line
        orphan = int(line.split()[1])
        parent.kill()  # the gateway crashes; its worker lives on
        await parent.wait()
        assert pid_alive(orphan)
        # a forged record naming a process we did not start (wrong start time) must not be acted on
        forged = {
            "pid": stranger.pid, "start_time": (proc_start_time(stranger.pid) or 0) + 1, "cmdline_sha256": "x",
            "argv": ["sleep"], "instance": "test", "run_id": "old", "model": "m", "endpoint": "e",
        }  # fmt: skip
        (state / f"test-{stranger.pid}-1.json").write_text(json.dumps(forged))

        config = make_config(tmp_path, [process_launch(port)])
        sup = Supervisor(config)
        await sup.start()
        try:
            assert sup.reaped["processes"] == [str(orphan)]
            assert await async_wait_until(lambda: not pid_alive(orphan), 5)
            assert pid_alive(stranger.pid)
            assert await sup.wait_ready(15)  # the port is free again for the new worker
        finally:
            await sup.stop()
        orphans_left = sum(pid_alive(p) for p in (orphan,))
        print(f"FIGURE process orphans left {orphans_left}")
        assert orphans_left == 0
    finally:
        for proc in (parent, stranger):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.mark.parametrize("command", [["/nonexistent/binary"], [sys.executable, "-c", "raise SystemExit(0)"]])
async def test_unlaunchable_or_instantly_exiting_command_gives_up(tmp_path: Path, command: list[str]) -> None:
    port = free_port()
    launch = {"port": port, "command": command, "max_restarts": 1, "backoff_base_s": 0.01}
    sup = Supervisor(make_config(tmp_path, [launch]))
    await sup.start()
    try:
        ep = sup.lifecycle[f"http://127.0.0.1:{port}"]
        assert await async_wait_until(lambda: ep.state == "failed", 10)
        assert ep.info()["restarts"] == 1
        if command[0].startswith("/nonexistent"):
            assert "cannot execute" in ep.info()["last_logs"][0]
        else:
            assert ep.info()["last_exit_code"] == 0
    finally:
        await sup.stop()

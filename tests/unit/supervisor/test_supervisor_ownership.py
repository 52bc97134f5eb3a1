"""State records, /proc verification and orphan reaping with real (harmless) processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from modelgate.supervisor import ownership
from modelgate.supervisor.ownership import (
    ProcessRecords,
    container_labels,
    proc_cmdline_hash,
    proc_start_time,
    reap_orphan_processes,
)


def test_proc_start_time_is_stable_and_distinct() -> None:
    mine = proc_start_time(os.getpid())
    assert isinstance(mine, int) and mine > 0
    assert proc_start_time(os.getpid()) == mine
    assert proc_start_time(2**22 + 12345) is None
    assert proc_cmdline_hash(os.getpid()) is not None


def test_labels() -> None:
    assert container_labels("gw", "r1", "llama", "http://h:1") == {
        "modelgate.owner": "gw",
        "modelgate.run": "r1",
        "modelgate.model": "llama",
        "modelgate.endpoint": "http://h:1",
    }


async def _sleeper() -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(30)", start_new_session=True
    )


async def test_record_roundtrip_and_forget(tmp_path: Path) -> None:
    records = ProcessRecords(tmp_path / "s", "gw")
    proc = await _sleeper()
    try:
        rec = await records.record(proc.pid, ("python",), run_id="r1", model="m", endpoint="e")
        assert rec is not None and rec.matches_live_process()
        assert records.load() == [rec]
        assert ProcessRecords(tmp_path / "s", "other").load() == []  # another instance's view
        records.forget(rec)
        assert records.load() == []
    finally:
        proc.kill()
        await proc.wait()
    assert not rec.matches_live_process()


async def test_reap_kills_verified_orphans_only(tmp_path: Path) -> None:
    records = ProcessRecords(tmp_path, "gw")
    orphan, stranger, current = await _sleeper(), await _sleeper(), await _sleeper()
    try:
        await records.record(orphan.pid, ("a",), run_id="old", model="m", endpoint="e1")
        forged = await records.record(stranger.pid, ("b",), run_id="old", model="m", endpoint="e2")
        assert forged is not None
        # the pid was recycled by someone else: its start time no longer matches the record
        path = tmp_path / f"gw-{stranger.pid}-{forged.start_time}.json"
        data = json.loads(path.read_text())
        data["start_time"] += 1
        path.write_text(json.dumps(data))
        await records.record(current.pid, ("c",), run_id="now", model="m", endpoint="e3")
        (tmp_path / "gw-garbage.json").write_text("{not json")

        killed = await reap_orphan_processes(records, "now", timeout_s=2.0)

        assert killed == [orphan.pid]
        assert await asyncio.wait_for(orphan.wait(), 5) == -15
        assert stranger.returncode is None and current.returncode is None
        assert [r.pid for r in records.load()] == [current.pid]  # stale records dropped
    finally:
        for p in (orphan, stranger, current):
            if p.returncode is None:
                p.kill()
                await p.wait()


async def test_reap_escalates_to_sigkill(tmp_path: Path) -> None:
    records = ProcessRecords(tmp_path, "gw")
    stubborn = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import signal, time, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(30)",
        stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert stubborn.stdout is not None
        await asyncio.wait_for(stubborn.stdout.readline(), 10)
        await records.record(stubborn.pid, ("s",), run_id="old", model="m", endpoint="e")
        assert await reap_orphan_processes(records, "now", timeout_s=0.3) == [stubborn.pid]
        assert await asyncio.wait_for(stubborn.wait(), 5) == -9
    finally:
        if stubborn.returncode is None:
            stubborn.kill()
            await stubborn.wait()


async def test_record_waits_out_the_exec_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after exec, /proc/<pid>/cmdline reads empty for a moment (seen 2 in 300 launches
    on a loaded 2-core machine): the record waits for it instead of leaving the process unrecorded."""
    real = ownership.proc_cmdline_hash
    calls: list[int] = []

    def empty_at_first(pid: int) -> str | None:
        calls.append(pid)
        return None if len(calls) <= 3 else real(pid)

    monkeypatch.setattr(ownership, "proc_cmdline_hash", empty_at_first)
    records = ProcessRecords(tmp_path, "gw")
    proc = await _sleeper()
    try:
        rec = await records.record(proc.pid, ("python",), run_id="r1", model="m", endpoint="e")
        assert rec is not None and len(calls) == 4
        assert records.load() == [rec]
    finally:
        proc.kill()
        await proc.wait()


async def test_record_of_a_vanished_process_is_none(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await proc.wait()
    assert (
        await ProcessRecords(tmp_path, "gw").record(proc.pid, ("p",), run_id="r", model="m", endpoint="e")
        is None
    )
    assert ProcessRecords(tmp_path, "gw").load() == []

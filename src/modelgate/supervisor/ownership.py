"""What modelgate owns: container labels, process state records, and reaping orphans.

A process is ours only if a state record names it AND the live process still has
the start time (``/proc/<pid>/stat`` field 22) and command line hash recorded when
we launched it: a recycled pid never matches both.  A container is ours only if
it carries ``modelgate.owner=<instance>``; unlabelled containers are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LABEL_OWNER = "modelgate.owner"
LABEL_MODEL = "modelgate.model"
LABEL_ENDPOINT = "modelgate.endpoint"
LABEL_RUN = "modelgate.run"

_EXEC_WAIT_STEPS = 200  # x 5 ms: how long record() waits for a fresh exec's command line
_EXEC_WAIT_STEP_S = 0.005


def container_labels(instance: str, run_id: str, model_id: str, endpoint_url: str) -> dict[str, str]:
    return {LABEL_OWNER: instance, LABEL_RUN: run_id, LABEL_MODEL: model_id, LABEL_ENDPOINT: endpoint_url}


def proc_start_time(pid: int) -> int | None:
    """Clock ticks since boot when ``pid`` started (field 22 of /proc/<pid>/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 counted from 1, minus pid, comm and state
    except (IndexError, ValueError):
        return None


def proc_cmdline_hash(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return hashlib.sha256(raw).hexdigest() if raw else None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].startswith(("Z", "X"))


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    start_time: int
    cmdline_sha256: str
    argv: tuple[str, ...]
    instance: str
    run_id: str
    model: str
    endpoint: str

    def matches_live_process(self) -> bool:
        return (
            proc_start_time(self.pid) == self.start_time
            and proc_cmdline_hash(self.pid) == self.cmdline_sha256
            and not _is_zombie(self.pid)
        )


class ProcessRecords:
    """JSON state records, one file per launched process, under ``state_dir``."""

    def __init__(self, state_dir: Path, instance: str):
        self.dir = state_dir
        self.instance = instance
        self._paths: dict[ProcessRecord, Path] = {}  # where load() found each record

    def _path(self, pid: int, start_time: int) -> Path:
        return self.dir / f"{self.instance}-{pid}-{start_time}.json"

    async def record(
        self, pid: int, argv: tuple[str, ...], *, run_id: str, model: str, endpoint: str
    ) -> ProcessRecord | None:
        """Write the record of a just-launched process; None if it vanished or never finished exec.

        The parent learns that exec succeeded when the close-on-exec pipe closes, which the
        kernel does before it lays out the new program's arguments: for a moment
        ``/proc/<pid>/cmdline`` reads empty.  Wait that moment out (bounded) instead of
        leaving the process unrecorded, and so unreapable after a crash of ours.
        """
        start, digest = proc_start_time(pid), proc_cmdline_hash(pid)
        for _ in range(_EXEC_WAIT_STEPS):
            if start is None or digest is not None:
                break
            await asyncio.sleep(_EXEC_WAIT_STEP_S)
            start, digest = proc_start_time(pid), proc_cmdline_hash(pid)
        if start is None or digest is None:
            log.warning("supervisor: pid %d vanished or has no command line; not recorded", pid)
            return None
        rec = ProcessRecord(pid, start, digest, argv, self.instance, run_id, model, endpoint)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(pid, start)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(rec)))
        tmp.replace(path)
        return rec

    def forget(self, rec: ProcessRecord) -> None:
        path = self._paths.pop(rec, None) or self._path(rec.pid, rec.start_time)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def load(self) -> list[ProcessRecord]:
        out: list[ProcessRecord] = []
        for path in sorted(self.dir.glob(f"{self.instance}-*.json")):
            try:
                data = json.loads(path.read_text())
                data["argv"] = tuple(data["argv"])
                rec = ProcessRecord(**data)
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("supervisor: unreadable state record %s (%s); removing it", path, exc)
                path.unlink(missing_ok=True)
                continue
            if rec.instance == self.instance:
                self._paths[rec] = path
                out.append(rec)
        return out


class InstanceLock:
    """An exclusive ``flock`` on ``<state_dir>/<instance>.lock`` while a supervisor runs: a second
    gateway with the same instance name refuses to start instead of reaping the first's
    children as orphans.  The kernel drops the lock when its holder dies, so a crashed
    gateway's successor takes it over and reaps."""

    def __init__(self, state_dir: Path, instance: str):
        self.path = state_dir / f"{instance}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        from modelgate.supervisor.errors import InstanceTaken

        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InstanceTaken(
                f"another gateway already supervises as instance {self.path.stem!r} ({self.path}); "
                "give each gateway its own address or supervisor.instance"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the flock


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads (we launch with a new session), else the pid."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


async def terminate_verified(rec: ProcessRecord, timeout_s: float) -> bool:
    """SIGTERM, wait, SIGKILL an orphan, re-verifying it before each signal.  True if it was ours."""
    if not rec.matches_live_process():
        return False
    signal_group(rec.pid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if not rec.matches_live_process():
            return True
        await asyncio.sleep(0.05)
    if rec.matches_live_process():
        signal_group(rec.pid, signal.SIGKILL)
    return True


async def reap_orphan_processes(records: ProcessRecords, run_id: str, timeout_s: float) -> list[int]:
    """Stop processes a previous run recorded and left behind; drop every stale record."""
    killed: list[int] = []
    for rec in records.load():
        if rec.run_id == run_id:
            continue
        if await terminate_verified(rec, timeout_s):
            log.warning(
                "supervisor: stopped orphan pid %d (%s) left by run %s", rec.pid, rec.endpoint, rec.run_id
            )
            killed.append(rec.pid)
        records.forget(rec)
    return killed

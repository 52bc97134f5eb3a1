"""Run an endpoint's ``launch: {kind: process}`` as a real subprocess.

The child gets its own session (so its whole process group can be signalled),
stdin from /dev/null, and stdout+stderr merged into a ring buffer of lines.  Every
child has a state record (ownership.py) while it runs, so a later run can stop it
if this one crashes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
from collections.abc import Mapping

from modelgate.config import LaunchSpec
from modelgate.supervisor.errors import LaunchFailed
from modelgate.supervisor.ownership import ProcessRecord, ProcessRecords, signal_group

log = logging.getLogger(__name__)


def child_environment(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """A child's whole environment: ``base`` (``supervisor.child_env``: what ``inherit_env``
    admits of the gateway's, read at load) plus ``launch.env``.  Never the gateway's own
    environment as a whole: its keys and ``MODELGATE_*`` stay with it."""
    return {**base, **extra}


class ProcessRunner:
    kind = "process"

    def __init__(
        self,
        spec: LaunchSpec,
        records: ProcessRecords,
        *,
        run_id: str,
        model: str,
        endpoint: str,
        base_env: Mapping[str, str] | None = None,
        log_lines: int = 50,
    ):
        self._spec = spec
        self._env = child_environment(base_env or {}, spec.env)
        self._records = records
        self._run_id = run_id
        self._model = model
        self._endpoint = endpoint
        self._lines: collections.deque[str] = collections.deque(maxlen=log_lines)
        self._proc: asyncio.subprocess.Process | None = None
        self._record: ProcessRecord | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def ident(self) -> str | None:
        return str(self._proc.pid) if self._proc is not None and self._proc.returncode is None else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> str:
        if self._proc is not None and self._proc.returncode is None:
            raise LaunchFailed(f"{self._endpoint}: a child is already running (pid {self._proc.pid})")
        self._lines.clear()
        argv = tuple(self._spec.command)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self._spec.cwd,
                env=self._env,
                start_new_session=True,
            )
        except OSError as exc:
            raise LaunchFailed(
                f"{self._endpoint}: cannot execute {argv[0]!r}: {exc.strerror or exc}"
            ) from exc
        self._proc = proc
        self._record = await self._records.record(
            proc.pid, argv, run_id=self._run_id, model=self._model, endpoint=self._endpoint
        )
        self._reader = asyncio.create_task(self._read_output(proc), name=f"supervisor-log-{proc.pid}")
        log.info("supervisor: %s started pid %d: %s", self._endpoint, proc.pid, " ".join(argv))
        return str(proc.pid)

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):  # a line over the stream limit
                line = (await proc.stdout.read(65536)) or b""
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\n")
            self._lines.append(text)
            log.debug("[%s] %s", self._endpoint, text)

    async def wait(self) -> int | None:
        proc = self._require()
        code = await proc.wait()
        await self._release(proc)
        return code

    async def _release(self, proc: asyncio.subprocess.Process) -> None:
        """After the leader exited: kill stragglers in its group, finish reading, drop the record."""
        if self._record is None and self._reader is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(
                proc.pid, signal.SIGKILL
            )  # the group we created; its id stays ours while it has members
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 2.0)
            self._reader = None
        if self._record is not None:
            self._records.forget(self._record)
            self._record = None

    async def stop(self, timeout_s: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                log.warning(
                    "supervisor: %s pid %d ignored SIGTERM for %.1fs; SIGKILL",
                    self._endpoint,
                    proc.pid,
                    timeout_s,
                )
                signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        await self._release(proc)
        return proc.returncode

    async def logs(self, lines: int) -> list[str]:
        return list(self._lines)[-lines:]

    def _require(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            raise LaunchFailed(f"{self._endpoint}: not started")
        return self._proc

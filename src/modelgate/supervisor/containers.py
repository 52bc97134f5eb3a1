"""Run an endpoint's ``launch: {kind: container}`` through the Docker Engine API, and reap containers.

Every container carries modelgate's labels (ownership.py).  Exit is noticed by
polling the container's state; logs stay readable until the next start, which
removes the previous container first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from modelgate.config import LaunchSpec
from modelgate.supervisor.docker_api import DockerApi
from modelgate.supervisor.errors import ContainerNotFound, LaunchFailed
from modelgate.supervisor.ownership import LABEL_OWNER, LABEL_RUN

log = logging.getLogger(__name__)

GONE = frozenset({"exited", "dead", "stopped", "removing"})


def device_requests(gpus: str | int | None) -> list[Any]:
    """``gpus: all`` | a count | "0,1" (device ids), as Docker DeviceRequests."""
    if gpus is None:
        return []
    from docker.types import DeviceRequest

    if gpus == "all" or gpus == -1:
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if isinstance(gpus, int) or str(gpus).isdigit():
        return [DeviceRequest(count=int(gpus), capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=[g.strip() for g in str(gpus).split(",")], capabilities=[["gpu"]])]


def run_kwargs(
    spec: LaunchSpec, labels: Mapping[str, str], extra_volumes: Mapping[str, Mapping[str, str]]
) -> dict[str, Any]:
    """The ``containers.run`` arguments for a launch spec (pure; unit-tested).  The environment
    is the image's plus ``launch.env``: nothing of the gateway's own."""
    kwargs: dict[str, Any] = {"labels": dict(labels), "environment": dict(spec.env)}
    if spec.command:
        kwargs["command"] = list(spec.command)
    volumes = {host: dict(v) for host, v in {**spec.volumes, **extra_volumes}.items()}
    if volumes:
        kwargs["volumes"] = volumes
    if spec.ports:  # (address, port): never Docker's default of every interface
        kwargs["ports"] = {c: (b.host, b.port or None) for c, b in spec.ports.items()}
    if spec.network_mode:
        kwargs["network_mode"] = spec.network_mode
    if spec.memory:
        kwargs["mem_limit"] = spec.memory
    if spec.cpus:
        kwargs["nano_cpus"] = int(spec.cpus * 1e9)
    if spec.cwd:
        kwargs["working_dir"] = spec.cwd
    if requests := device_requests(spec.gpus):
        kwargs["device_requests"] = requests
    return kwargs


class ContainerRunner:
    kind = "container"

    def __init__(
        self,
        spec: LaunchSpec,
        api: DockerApi,
        *,
        labels: Mapping[str, str],
        extra_volumes: Mapping[str, Mapping[str, str]] | None = None,
        poll_s: float = 0.25,
    ):
        assert spec.image
        self._spec = spec
        self._image = spec.image
        self._api = api
        self._labels = dict(labels)
        self._extra_volumes = dict(extra_volumes or {})
        self._poll_s = poll_s
        self._container: Any = None
        self._running = False

    @property
    def ident(self) -> str | None:
        return str(self._container.id) if self._container is not None and self._running else None

    @property
    def container_id(self) -> str | None:
        return str(self._container.id) if self._container is not None else None

    def set_extra_volumes(self, volumes: Mapping[str, Mapping[str, str]]) -> None:
        self._extra_volumes = dict(volumes)

    async def start(self) -> str:
        if self._container is not None:  # the previous one: its logs were read, now it goes
            await self._remove()
        try:
            await self._api.connect()  # idempotent; picks up a daemon that came up late
            self._container = await self._api.run(
                self._image, **run_kwargs(self._spec, self._labels, self._extra_volumes)
            )
        except LaunchFailed:
            raise
        except Exception as exc:  # ContainerApiError / DockerUnavailable from the boundary
            raise LaunchFailed(f"cannot start container from {self._image}: {exc}") from exc
        self._running = True
        log.info("supervisor: started container %s from %s", self._container.id[:12], self._image)
        return str(self._container.id)

    async def wait(self) -> int | None:
        while True:
            try:
                status, code = await self._api.status(self._require())
            except ContainerNotFound:
                self._running = False
                return None
            if status in GONE:
                self._running = False
                return code
            await asyncio.sleep(self._poll_s)

    async def stop(self, timeout_s: float) -> int | None:
        if self._container is None:
            return None
        code: int | None = None
        try:
            if self._running:
                await self._api.stop(self._container, timeout_s)
            _, code = await self._api.status(self._container)
        except ContainerNotFound:
            pass
        await self._remove()
        return code

    async def _remove(self) -> None:
        container, self._container, self._running = self._container, None, False
        try:
            await self._api.remove(container)
        except ContainerNotFound:
            pass

    async def logs(self, lines: int) -> list[str]:
        if self._container is None:
            return []
        try:
            return await self._api.logs(self._container, lines)
        except ContainerNotFound:
            return []

    def _require(self) -> Any:
        if self._container is None:
            raise ContainerNotFound("no container started")
        return self._container


@dataclass(frozen=True)
class ReapResult:
    removed: tuple[str, ...] = ()  # exited/dead/created containers with our labels
    stopped: tuple[str, ...] = ()  # running orphans of a previous run, stopped and removed


async def reap_containers(
    api: DockerApi, *, instance: str, run_id: str, keep: Collection[str], stop_timeout_s: float = 5.0
) -> ReapResult:
    """Remove our dead containers and stop orphans of earlier runs; never touch unlabelled ones.

    ``run_id=""`` treats every container of ``instance`` as an orphan (the final sweep at stop).
    """
    removed: list[str] = []
    stopped: list[str] = []
    for c in await api.list_labelled({LABEL_OWNER: instance}):
        if c.id in keep or c.labels.get(LABEL_OWNER) != instance:
            continue
        try:
            status, _ = await api.status(c)
            if status not in GONE:
                if c.labels.get(LABEL_RUN) == run_id:
                    continue  # this run's, running or being started: its endpoint owns it
                if status != "created":
                    await api.stop(c, stop_timeout_s)
            (stopped if status not in GONE and status != "created" else removed).append(c.id)
            await api.remove(c)
        except ContainerNotFound:
            continue
    if removed or stopped:
        log.warning(
            "supervisor: reaped containers: removed %s, stopped orphans %s",
            [i[:12] for i in removed],
            [i[:12] for i in stopped],
        )
    return ReapResult(tuple(removed), tuple(stopped))

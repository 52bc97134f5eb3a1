"""The Supervisor: launches every endpoint that has ``launch:``, watches it, restarts it, reaps leftovers.

Lifespan (the app owns one instance)::

    sup = Supervisor(config, storage=storage_manager_or_None)
    await sup.start()          # reap a previous run's leftovers, launch everything
    router = Router(config, ctx, lifecycle=sup.lifecycle)
    ...
    await sup.stop()           # stop children (TERM, timeout, KILL), close volumes, final sweep

``lifecycle`` maps each supervised endpoint URL to its SupervisedEndpoint
(``.state``, ``.info()``); it is complete from construction on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from modelgate.config import Config, EndpointConfig, LaunchSpec, ModelConfig
from modelgate.errors import ModelGateError
from modelgate.http.client import UpstreamClient
from modelgate.supervisor.containers import ContainerRunner, ReapResult, reap_containers
from modelgate.supervisor.docker_api import DockerApi
from modelgate.supervisor.endpoint import SupervisedEndpoint
from modelgate.supervisor.health import HealthProbe, HttpHealthProbe
from modelgate.supervisor.ownership import (
    InstanceLock,
    ProcessRecords,
    container_labels,
    reap_orphan_processes,
)
from modelgate.supervisor.process import ProcessRunner
from modelgate.supervisor.runner import Runner
from modelgate.supervisor.state import Backoff, Lifecycle, Thresholds
from modelgate.supervisor.volumes import ModelVolumes, close_volume, open_volume

log = logging.getLogger(__name__)


def instance_name(config: Config) -> str:
    """Who owns this gateway's children: ``supervisor.instance``, else the address the gateway
    binds (``serve`` puts the really bound one in ``config.server``) and the config file's path,
    so two gateways from one config on two ports never share a name."""
    if config.supervisor.instance:
        return config.supervisor.instance
    source = config.source if config.source.startswith("<") else os.path.realpath(config.source)
    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", config.server.host)
    return f"modelgate-{host}-{config.server.port}-{digest}"


def state_dir(config: Config) -> Path:
    if config.supervisor.state_dir:
        return Path(config.supervisor.state_dir).expanduser()
    return Path.home() / ".local" / "state" / "modelgate" / "supervisor"


def supervised(config: Config) -> list[tuple[ModelConfig, EndpointConfig, LaunchSpec]]:
    return [(m, ep, ep.launch) for m in config.models for ep in m.endpoints if ep.launch is not None]


class Supervisor:
    def __init__(
        self,
        config: Config,
        *,
        storage: ModelVolumes | None = None,
        probe: HealthProbe | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._config = config
        self._sc = config.supervisor
        self._storage = storage
        self._probe = probe
        self._rng = rng or random.Random()
        self._clock = clock
        self.instance = instance_name(config)
        self.run_id = uuid.uuid4().hex[:12]
        self._records = ProcessRecords(state_dir(config), self.instance)
        self._lock = InstanceLock(state_dir(config), self.instance)
        specs = supervised(config)
        self._api = (
            DockerApi(self._sc.docker_url) if any(s.kind == "container" for _, _, s in specs) else None
        )
        self._endpoints: dict[str, SupervisedEndpoint] = {}
        for model, ep, spec in specs:
            self._endpoints[ep.url] = self._endpoint(model, ep, spec)
        # endpoints of models loaded on demand: started by launch(), stopped by halt()
        self._on_demand = {ep.url for m, ep, _ in specs if m.load == "on_demand"}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._http: UpstreamClient | None = None
        self._opened_volumes: list[str] = []
        self._volume_paths: dict[str, str] = {}
        self.reaped: dict[str, list[str]] = {
            "processes": [],
            "containers_removed": [],
            "containers_stopped": [],
        }

    # -- construction ---------------------------------------------------------------

    def _endpoint(self, model: ModelConfig, ep: EndpointConfig, spec: LaunchSpec) -> SupervisedEndpoint:
        runner: Runner
        if spec.kind == "process":
            runner = ProcessRunner(
                spec,
                self._records,
                run_id=self.run_id,
                model=model.id,
                endpoint=ep.url,
                base_env=self._sc.child_env,
                log_lines=self._sc.log_lines,
            )
        else:
            assert self._api is not None
            if spec.network_mode == "host":
                log.warning(
                    "supervisor: %s runs with network_mode host: its server is reachable on every "
                    "interface it binds (TGI: pass --hostname 127.0.0.1), or publish ports instead",
                    ep.url,
                )
            labels = container_labels(self.instance, self.run_id, model.id, ep.url)
            runner = ContainerRunner(spec, self._api, labels=labels)
        lifecycle = Lifecycle(
            backoff=Backoff(spec.backoff_base_s, spec.backoff_max_s, self._sc.backoff_jitter),
            thresholds=Thresholds(
                degraded_after=self._sc.degraded_after,
                restart_after=self._sc.restart_after,
                stable_after_s=self._sc.stable_after_s,
                max_restarts=spec.max_restarts,
            ),
            rng=self._rng,
        )
        return SupervisedEndpoint(
            ep.url,
            model.id,
            spec,
            runner,
            lifecycle,
            self._probe_or_http,
            interval_s=self._sc.health_interval_s,
            log_lines=self._sc.log_lines,
            clock=self._clock,
        )

    async def _probe_or_http(self, url: str) -> bool:
        if self._probe is not None:
            return await self._probe(url)
        if self._http is None:
            return False
        return await HttpHealthProbe(self._http, self._sc.health_timeout_s)(url)

    # -- public ---------------------------------------------------------------------

    @property
    def lifecycle(self) -> Mapping[str, SupervisedEndpoint]:
        return MappingProxyType(self._endpoints)

    def snapshot(self) -> list[dict[str, Any]]:
        return [ep.info() for ep in self._endpoints.values()]

    async def start(self) -> None:
        """Reap what a previous run left, then launch every supervised endpoint."""
        if not self._endpoints:
            return
        self._lock.acquire()  # before reaping: never another live gateway's children
        log.info(
            "supervisor: instance %s, state in %s%s",
            self.instance,
            self._records.dir,
            f"; Docker API at {self._api.base_url} (from {self._sc.docker_host_from})" if self._api else "",
        )
        self._http = UpstreamClient()
        await self.reap(initial=True)
        for url, ep in self._endpoints.items():
            if url in self._on_demand:
                ep.lc.stopped(self._clock())  # launched by the first request (launch())
                continue
            if not await self._attach_volume(ep):
                ep.lc.state = "failed"
                continue
            self._tasks[url] = asyncio.create_task(self._guard(ep), name=f"supervisor-{url}")
        self._reaper = asyncio.create_task(self._reap_forever(), name="supervisor-reaper")

    async def launch(self, url: str) -> None:
        """Start one endpoint now (a model on demand); nothing when it runs already."""
        task = self._tasks.get(url)
        if task is not None and not task.done():
            return
        ep = self._endpoints[url]
        if not await self._attach_volume(ep):
            return  # its lifecycle says why
        ep.lc.crash_count = 0  # a fresh start, not a restart of a crash loop
        ep.lc.state = "starting"
        self._tasks[url] = asyncio.create_task(self._guard(ep), name=f"supervisor-{url}")

    async def halt(self, url: str) -> None:
        """Stop one endpoint (its child stopped, state ``stopped``) until launch() again."""
        task = self._tasks.pop(url, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        ep = self._endpoints[url]
        try:
            await ep.stop()
        except ModelGateError as exc:
            log.error("supervisor: stopping %s: %s", url, exc.message)

    async def apply(self, config: Config) -> dict[str, list[str]]:
        """A reloaded config: endpoints whose launch (and model) did not change keep running
        untouched; removed or changed ones are stopped; new ones start (on-demand ones
        wait for their first request)."""
        specs = {ep.url: (m, ep, spec) for m, ep, spec in supervised(config)}
        on_demand = {ep.url for m, ep, _ in specs.values() if m.load == "on_demand"}
        diff: dict[str, list[str]] = {"started": [], "stopped": [], "kept": []}
        for url, ep in list(self._endpoints.items()):
            new = specs.get(url)
            if (
                new is not None
                and new[2] == ep.spec
                and new[0].id == ep.model_id
                and ((url in on_demand) == (url in self._on_demand))
            ):
                diff["kept"].append(url)
                continue
            await self.halt(url)
            del self._endpoints[url]
            diff["stopped"].append(url)
        self._config = config
        self._on_demand = on_demand
        if self._api is None and any(spec.kind == "container" for _, _, spec in specs.values()):
            self._api = DockerApi(config.supervisor.docker_url)
        if specs and not self._lock.held:
            self._lock.acquire()
            self._http = UpstreamClient()
        for url, (m, ep_cfg, spec) in specs.items():
            if url in self._endpoints:
                continue
            ep = self._endpoints[url] = self._endpoint(m, ep_cfg, spec)
            if url in on_demand:
                ep.lc.stopped(self._clock())
            else:
                await self.launch(url)
            diff["started"].append(url)
        return diff

    async def wait_ready(self, timeout_s: float) -> bool:
        """True once every endpoint is ready (for tests, benches and ``check``)."""
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(ep.ready_event.wait() for ep in self._endpoints.values()))
        except TimeoutError:
            return False
        return all(ep.state == "ready" for ep in self._endpoints.values())

    async def stop(self) -> None:
        """Stop everything launched (TERM, timeout, KILL / container stop+remove), close volumes.
        Nothing when start() did not take the instance's lock: what runs is another gateway's."""
        if not self._lock.held:
            return
        tasks = [t for t in (self._reaper, *self._tasks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reaper = None
        self._tasks.clear()
        results = await asyncio.gather(
            *(ep.stop() for ep in self._endpoints.values()), return_exceptions=True
        )
        for ep, res in zip(self._endpoints.values(), results, strict=True):
            if isinstance(res, BaseException):
                log.error("supervisor: stopping %s: %s", ep.url, res)
        if self._api is not None:
            with contextlib.suppress(ModelGateError):
                await reap_containers(self._api, instance=self.instance, run_id="", keep=())
            await self._api.close()
        await self._close_volumes()
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._lock.release()

    async def reap(self, *, initial: bool = False) -> ReapResult:
        """Stop orphans of earlier runs; remove our exited/dead containers (never unlabelled ones)."""
        if initial:
            pids = await reap_orphan_processes(self._records, self.run_id, timeout_s=5.0)
            self.reaped["processes"].extend(map(str, pids))
        if self._api is None:
            return ReapResult()
        if initial:
            try:
                await self._api.connect()
            except ModelGateError as exc:  # container endpoints will fail (and retry) on their own
                log.error("supervisor: %s (address from %s)", exc.message, self._sc.docker_host_from)
                return ReapResult()
        await self._api.connect()
        keep = {cid for ep in self._endpoints.values() if (cid := getattr(ep.runner, "container_id", None))}
        result = await reap_containers(self._api, instance=self.instance, run_id=self.run_id, keep=keep)
        self.reaped["containers_removed"].extend(result.removed)
        self.reaped["containers_stopped"].extend(result.stopped)
        return result

    # -- background -----------------------------------------------------------------

    async def _guard(self, ep: SupervisedEndpoint) -> None:
        try:
            await ep.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("supervisor: watcher of %s crashed; marking it failed", ep.url)
            ep.lc.last_reason = "supervisor watcher crashed"
            ep.lc.state = "failed"

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sc.reap_interval_s)
            try:
                await self.reap()
            except ModelGateError as exc:
                log.warning("supervisor: periodic reap failed: %s", exc.message)

    # -- LUKS volumes for containers ---------------------------------------------------

    async def _attach_volume(self, ep: SupervisedEndpoint) -> bool:
        """Open the model's LUKS volume for a container that wants it; False if that failed."""
        model = self._config.model(ep.model_id)
        if not (isinstance(ep.runner, ContainerRunner) and ep.spec.luks_volume and model and model.storage):
            return True
        if self._storage is None:
            ep.lc.launch_failed(
                f"model {ep.model_id!r} has a LUKS volume but no storage manager was given", 0
            )
            log.error("supervisor: %s: %s", ep.url, ep.lc.last_reason)
            return False
        if ep.model_id not in self._opened_volumes:
            try:
                path = await open_volume(self._storage, ep.model_id)
            except ModelGateError as exc:
                ep.lc.launch_failed(exc.message, self._clock())
                log.error("supervisor: %s", exc.message)
                return False
            self._opened_volumes.append(ep.model_id)
            self._volume_paths[ep.model_id] = path
        ep.runner.set_extra_volumes(
            {self._volume_paths[ep.model_id]: {"bind": ep.spec.luks_volume, "mode": "ro"}}
        )
        return True

    async def _close_volumes(self) -> None:
        while self._opened_volumes and self._storage is not None:
            model_id = self._opened_volumes.pop()
            try:
                await close_volume(self._storage, model_id)
            except ModelGateError as exc:
                log.error("supervisor: %s", exc.message)

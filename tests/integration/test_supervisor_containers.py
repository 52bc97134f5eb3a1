"""The supervisor with real containers through Podman's Docker-compatible API.

A session fixture runs ``scripts/setup-podman`` (idempotent: configures podman,
starts ``podman system service``, imports a busybox image offline).  Skips with
the reason when podman is absent or its service cannot start.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_supervisor_support import async_wait_until
from tests.support.net import free_port

from modelgate.config import Config, build_config
from modelgate.supervisor.ownership import LABEL_OWNER, LABEL_RUN
from modelgate.supervisor.supervisor import Supervisor

pytestmark = pytest.mark.podman

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/modelgate-busybox:latest"


@pytest.fixture(scope="session")
def docker_host() -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/setup-podman installs it)")
    try:
        out = subprocess.run(
            [str(ROOT / "scripts" / "setup-podman")], capture_output=True, text=True, timeout=120, check=True
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"podman's API service could not start: {getattr(exc, 'stderr', '') or exc}")
    return out.stdout.strip().splitlines()[-1].split("=", 1)[1]


@pytest.fixture
def docker(docker_host: str) -> Iterator[Any]:
    import docker as docker_sdk

    client = docker_sdk.DockerClient(base_url=docker_host)
    yield client
    client.close()


@pytest.fixture
def instance(docker: Any) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    yield name
    for c in docker.containers.list(all=True, filters={"label": f"{LABEL_OWNER}={name}"}):
        c.remove(force=True)


def httpd(port: int) -> list[str]:
    return ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"]


def graceful(*argv: str) -> list[str]:
    """PID 1 ignores SIGTERM unless it traps it: exit 0 on SIGTERM, like a well-behaved server."""
    return ["sh", "-c", f"trap 'exit 0' TERM; {' '.join(argv)} & wait"]


def make_config(docker_host: str, instance: str, tmp_path: Path, launches: list[dict[str, Any]]) -> Config:
    endpoints = [
        {
            "url": f"http://127.0.0.1:{launch.pop('port')}",
            "launch": {
                "kind": "container",
                "image": IMAGE,
                "network_mode": "host",
                "stop_timeout_s": 1,
                **launch,
            },
        }
        for launch in launches
    ]
    raw = {
        "supervisor": {
            "docker_host": docker_host,
            "instance": instance,
            "state_dir": str(tmp_path),
            "health_interval_s": 0.1,
            "health_timeout_s": 0.5,
        },
        "models": [{"id": "m", "backend": "openai", "endpoints": endpoints}],
    }
    return build_config(raw, source="test", environ={})


async def ours(docker: Any, instance: str) -> list[Any]:
    return await asyncio.to_thread(
        docker.containers.list, all=True, filters={"label": f"{LABEL_OWNER}={instance}"}
    )


async def test_killed_container_is_restarted_and_nothing_left_after_stop(
    docker: Any, docker_host: str, instance: str, tmp_path: Path
) -> None:
    port = free_port()
    cfg = make_config(
        docker_host, instance, tmp_path, [{"port": port, "command": httpd(port), "backoff_base_s": 0.05}]
    )
    sup = Supervisor(cfg)
    await sup.start()
    try:
        assert await sup.wait_ready(30)
        ep = sup.lifecycle[f"http://127.0.0.1:{port}"]
        first = ep.info()["container_id"]
        labels = (await asyncio.to_thread(docker.containers.get, first)).labels
        assert labels[LABEL_OWNER] == instance and labels["modelgate.model"] == "m"
        assert labels["modelgate.endpoint"] == f"http://127.0.0.1:{port}"

        t0 = time.monotonic()
        await asyncio.to_thread(docker.containers.get(first).kill)
        assert await async_wait_until(lambda: ep.state != "ready", 10)
        assert await async_wait_until(lambda: ep.state == "ready", 30)
        print(f"FIGURE container kill->ready {time.monotonic() - t0:.3f}s")
        info = ep.info()
        assert info["restarts"] == 1 and info["last_exit_code"] == 137
        assert info["container_id"] != first
        ids = {c.id for c in await ours(docker, instance)}
        assert ids == {info["container_id"]}  # the killed one was removed on restart
    finally:
        await sup.stop()
    left = await ours(docker, instance)
    print(f"FIGURE container orphans left {len(left)}")
    assert left == []


async def test_planned_stop_exit_0_restarts(
    docker: Any, docker_host: str, instance: str, tmp_path: Path
) -> None:
    port = free_port()
    launch = {"port": port, "command": graceful(*httpd(port)), "backoff_base_s": 0.05}
    sup = Supervisor(make_config(docker_host, instance, tmp_path, [launch]))
    await sup.start()
    try:
        assert await sup.wait_ready(30)
        ep = sup.lifecycle[f"http://127.0.0.1:{port}"]
        await asyncio.to_thread(docker.containers.get(ep.info()["container_id"]).stop, timeout=5)
        assert await async_wait_until(lambda: ep.lc.restarts == 1 and ep.state == "ready", 30)
        assert ep.info()["last_exit_code"] == 0
    finally:
        await sup.stop()


async def test_crash_loop_container_fails_with_its_logs(
    docker: Any, docker_host: str, instance: str, tmp_path: Path
) -> None:
    port = free_port()
    launch = {
        "port": port,
        "command": ["sh", "-c", "echo dying now; exit 7"],
        "max_restarts": 2,
        "backoff_base_s": 0.05,
    }
    sup = Supervisor(make_config(docker_host, instance, tmp_path, [launch]))
    await sup.start()
    try:
        ep = sup.lifecycle[f"http://127.0.0.1:{port}"]
        assert await async_wait_until(lambda: ep.state == "failed", 30)
        info = ep.info()
        assert info["restarts"] == 2 and info["last_exit_code"] == 7
        assert "dying now" in info["last_logs"]
    finally:
        await sup.stop()
    assert await ours(docker, instance) == []


async def test_leftovers_reaped_unlabelled_left_alone(
    docker: Any, docker_host: str, instance: str, tmp_path: Path
) -> None:
    run = docker.containers.run
    old = {LABEL_OWNER: instance, LABEL_RUN: "previous", "modelgate.model": "m"}
    orphan = await asyncio.to_thread(run, IMAGE, graceful("sleep", "300"), detach=True, labels=old)
    dead = await asyncio.to_thread(run, IMAGE, ["true"], detach=True, labels=old)
    other_owner = await asyncio.to_thread(
        run, IMAGE, ["sleep", "300"], detach=True, labels={LABEL_OWNER: instance + "-other"}
    )
    stranger = await asyncio.to_thread(run, IMAGE, ["sleep", "300"], detach=True)
    try:
        await asyncio.to_thread(dead.wait, timeout=20)
        port = free_port()
        sup = Supervisor(
            make_config(docker_host, instance, tmp_path, [{"port": port, "command": httpd(port)}])
        )
        await sup.start()
        try:
            assert set(sup.reaped["containers_stopped"]) == {orphan.id}
            assert set(sup.reaped["containers_removed"]) == {dead.id}
            assert await sup.wait_ready(30)
            # a labelled container that dies while we run is removed by the periodic sweep
            late = await asyncio.to_thread(run, IMAGE, ["true"], detach=True, labels=old)
            await asyncio.to_thread(late.wait, timeout=20)
            result = await sup.reap()
            assert result.removed == (late.id,) and result.stopped == ()
            ids = {c.id for c in await ours(docker, instance)}
            assert ids == {sup.lifecycle[f"http://127.0.0.1:{port}"].info()["container_id"]}
        finally:
            await sup.stop()
        assert await ours(docker, instance) == []
        for untouched in (stranger, other_owner):
            await asyncio.to_thread(untouched.reload)
            assert untouched.status == "running"
    finally:
        for c in (orphan, dead, other_owner, stranger):
            try:
                await asyncio.to_thread(c.remove, force=True)
            except Exception:
                pass


async def test_stop_timeout_then_kill(docker: Any, docker_host: str, instance: str, tmp_path: Path) -> None:
    """``sleep`` as PID 1 ignores SIGTERM: stop() waits stop_timeout_s, then the engine kills it."""
    port = free_port()
    # a container that never serves /health stays "starting"; stop() must still take it down
    launch = {"port": port, "command": ["sleep", "300"], "stop_timeout_s": 1}
    sup = Supervisor(make_config(docker_host, instance, tmp_path, [launch]))
    await sup.start()
    ep = sup.lifecycle[f"http://127.0.0.1:{port}"]
    assert await async_wait_until(lambda: ep.info()["container_id"] is not None, 20)
    t0 = time.monotonic()
    await sup.stop()
    took = time.monotonic() - t0
    assert 0.9 < took < 15, took
    assert await ours(docker, instance) == []


class FakeVolumes:
    """The storage manager's acquire/release seam, over a plain directory (real LUKS: tests/integration/test_luks*)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls: list[str] = []

    async def acquire(self, model_id: str) -> Path:
        self.calls.append(f"acquire {model_id}")
        return self.path

    async def release(self, model_id: str) -> None:
        self.calls.append(f"release {model_id}")


async def test_model_volume_bound_read_only_and_released_after_stop(
    docker: Any, docker_host: str, instance: str, tmp_path: Path
) -> None:
    weights = tmp_path / "mnt"
    weights.mkdir()
    (weights / "health").write_text("from the volume\n")
    port = free_port()
    launch = {"port": port, "command": [*httpd(port)[:-1], "/weights"], "luks_volume": "/weights"}
    cfg = make_config(docker_host, instance, tmp_path, [launch])
    raw = cfg.model_dump(exclude={"source", "secrets"})
    raw["models"][0]["storage"] = {"kind": "luks", "device": str(tmp_path / "vol.img"), "mount": str(weights)}
    storage = FakeVolumes(weights)
    sup = Supervisor(build_config(raw, source="test", environ={}), storage=storage)
    await sup.start()
    try:
        assert await sup.wait_ready(30)  # httpd serves /health from the bound volume
        cid = sup.lifecycle[f"http://127.0.0.1:{port}"].info()["container_id"]
        mounts = (await asyncio.to_thread(docker.containers.get, cid)).attrs["Mounts"]
        (mount,) = [m for m in mounts if m["Destination"] == "/weights"]
        assert mount["Source"] == str(weights) and mount["RW"] is False
        assert storage.calls == ["acquire m"]
    finally:
        await sup.stop()
    assert storage.calls == ["acquire m", "release m"]
    assert await ours(docker, instance) == []


async def test_model_volume_without_storage_manager_fails_clearly(
    docker_host: str, instance: str, tmp_path: Path
) -> None:
    port = free_port()
    cfg = make_config(
        docker_host, instance, tmp_path, [{"port": port, "command": httpd(port), "luks_volume": "/w"}]
    )
    raw = cfg.model_dump(exclude={"source", "secrets"})
    raw["models"][0]["storage"] = {"kind": "luks", "device": "/dev/null", "mount": str(tmp_path)}
    sup = Supervisor(build_config(raw, source="test", environ={}))
    await sup.start()
    try:
        ep = sup.lifecycle[f"http://127.0.0.1:{port}"]
        assert ep.state == "failed" and "no storage manager" in (ep.lc.last_reason or "")
    finally:
        await sup.stop()


async def test_socket_from_docker_host_only_ports_on_loopback_and_no_gateway_env(
    docker: Any, docker_host: str, instance: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No supervisor.docker_host: the socket comes from DOCKER_HOST alone; a published port binds
    127.0.0.1; the container's environment is the image's plus launch.env, none of the gateway's."""
    import io
    import logging

    from modelgate.check import run_check

    port = free_port()
    launch = {
        "kind": "container",
        "image": IMAGE,
        "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
        "ports": {"8080": port},
        "env": {"FROM_LAUNCH": "yes"},
        "stop_timeout_s": 1,
    }
    endpoint = {"url": f"http://127.0.0.1:{port}", "api_key_env": "UPSTREAM_KEY", "launch": launch}
    raw = {
        "supervisor": {
            "instance": instance,
            "state_dir": str(tmp_path),
            "health_interval_s": 0.1,
            "health_timeout_s": 0.5,
        },
        "models": [{"id": "m", "backend": "openai", "endpoints": [endpoint]}],
    }
    environ = {
        "DOCKER_HOST": docker_host,
        "UPSTREAM_KEY": "sk-upstream-secret-0001",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    cfg = build_config(raw, source="test", environ=environ)
    assert (cfg.supervisor.docker_url, cfg.supervisor.docker_host_from) == (docker_host, "DOCKER_HOST")
    out = io.StringIO()
    await asyncio.to_thread(run_check, cfg, out=out)
    assert f"containers: Docker API at {docker_host} (from DOCKER_HOST)" in out.getvalue()

    sup = Supervisor(cfg)
    with caplog.at_level(logging.INFO, logger="modelgate.supervisor"):
        await sup.start()
    try:
        assert f"Docker API at {docker_host} (from DOCKER_HOST)" in caplog.text
        assert await sup.wait_ready(30)  # /health through the port published on loopback
        cid = sup.lifecycle[f"http://127.0.0.1:{port}"].info()["container_id"]
        attrs = (await asyncio.to_thread(docker.containers.get, cid)).attrs
        assert attrs["HostConfig"]["PortBindings"] == {
            "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
        }
        env = attrs["Config"]["Env"]
        assert "FROM_LAUNCH=yes" in env and "PATH=/bin" in env  # the image's PATH, not the gateway's
        assert not [e for e in env if "sk-upstream-secret" in e or e.startswith(("UPSTREAM_KEY=", "LANG="))]
    finally:
        await sup.stop()
    assert await ours(docker, instance) == []

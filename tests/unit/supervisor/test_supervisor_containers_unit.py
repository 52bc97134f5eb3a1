"""Launch spec -> Docker run arguments, and docker error translation (no daemon needed)."""

from __future__ import annotations

import asyncio

import pytest

from modelgate.config import LaunchSpec
from modelgate.errors import SupervisorError
from modelgate.supervisor.containers import device_requests, run_kwargs
from modelgate.supervisor.docker_api import DockerApi
from modelgate.supervisor.errors import ContainerNotFound, DockerUnavailable, ImageNotFound


def test_run_kwargs_full_spec() -> None:
    spec = LaunchSpec(
        kind="container",
        image="ghcr.io/huggingface/text-generation-inference:3.3.6",
        command=("--model-id", "/data/llama", "--port", "8082"),
        env={"HF_HUB_OFFLINE": "1"},
        volumes={"/srv/models": {"bind": "/data", "mode": "ro"}},
        ports={"80/tcp": 8082},
        gpus="all",
        memory="8g",
        cpus=2.5,
        network_mode="host",
    )
    kw = run_kwargs(spec, {"modelgate.owner": "gw"}, {"/mnt/luks": {"bind": "/weights", "mode": "ro"}})
    assert kw["command"] == ["--model-id", "/data/llama", "--port", "8082"]
    assert kw["environment"] == {"HF_HUB_OFFLINE": "1"}
    assert kw["volumes"] == {
        "/srv/models": {"bind": "/data", "mode": "ro"},
        "/mnt/luks": {"bind": "/weights", "mode": "ro"},
    }
    assert kw["ports"] == {"80/tcp": ("127.0.0.1", 8082)} and kw["network_mode"] == "host"
    assert kw["mem_limit"] == "8g" and kw["nano_cpus"] == 2_500_000_000
    assert kw["labels"] == {"modelgate.owner": "gw"}
    (req,) = kw["device_requests"]
    assert req["Count"] == -1 and req["Capabilities"] == [["gpu"]]


@pytest.mark.parametrize(
    ("ports", "want"),
    [
        ({"80/tcp": 8082}, {"80/tcp": ("127.0.0.1", 8082)}),  # loopback unless an address is named
        ({"80": "8082"}, {"80": ("127.0.0.1", 8082)}),
        ({"80": "0.0.0.0:8082"}, {"80": ("0.0.0.0", 8082)}),
        ({"80": "[::1]:8082"}, {"80": ("::1", 8082)}),
        ({"80": {"host": "10.0.0.5", "port": 8082}}, {"80": ("10.0.0.5", 8082)}),
        ({"80": 0}, {"80": ("127.0.0.1", None)}),  # any free port, still on loopback
        (
            ["127.0.0.1:8082:80", "8083:81/udp", "[::1]:8084:82"],
            {
                "80": ("127.0.0.1", 8082),
                "81/udp": ("127.0.0.1", 8083),
                "82": ("::1", 8084),
            },
        ),
    ],
)
def test_ports_publish_on_loopback_unless_an_address_is_named(ports: object, want: dict[str, object]) -> None:
    spec = LaunchSpec.model_validate({"kind": "container", "image": "busybox", "ports": ports})
    assert run_kwargs(spec, {}, {})["ports"] == want


@pytest.mark.parametrize("ports", [{"80": "localhost:8082"}, {"80": "x"}, ["8082"], {"80": 70000}])
def test_bad_ports_are_config_errors(ports: object) -> None:
    from modelgate.config import build_config
    from modelgate.errors import ConfigError

    ep = {"url": "http://127.0.0.1:1", "launch": {"kind": "container", "image": "b", "ports": ports}}
    raw = {"models": [{"id": "m", "backend": "openai", "endpoints": [ep]}]}
    with pytest.raises(ConfigError, match=r"models\.0\.endpoints\.0\.launch\.ports"):
        build_config(raw, source="t", environ={})


def test_run_kwargs_minimal() -> None:
    kw = run_kwargs(LaunchSpec(kind="container", image="busybox"), {}, {})
    assert set(kw) == {"labels", "environment"}


@pytest.mark.parametrize(
    ("gpus", "count", "ids"), [(2, 2, []), ("1", 1, []), ("0,3", 0, ["0", "3"]), (None, None, None)]
)
def test_device_requests(gpus: object, count: int | None, ids: list[str] | None) -> None:
    reqs = device_requests(gpus)  # type: ignore[arg-type]
    if gpus is None:
        assert reqs == []
        return
    assert reqs[0]["Count"] == count
    assert reqs[0]["DeviceIDs"] == ids


async def test_unreachable_daemon_is_a_supervisor_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    api = DockerApi(f"unix://{tmp_path}/nothing.sock", timeout_s=2)
    with pytest.raises(DockerUnavailable) as info:
        await asyncio.wait_for(api.connect(), 10)
    assert isinstance(info.value, SupervisorError) and info.value.status == 503
    assert isinstance(info.value.__cause__, Exception)


def test_translation_of_docker_errors() -> None:
    import docker.errors

    from modelgate.supervisor.docker_api import _translate

    assert isinstance(_translate(docker.errors.ImageNotFound("no"), "run x"), ImageNotFound)
    assert isinstance(_translate(docker.errors.NotFound("gone"), "inspect"), ContainerNotFound)

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
    assert kw["ports"] == {"80/tcp": 8082} and kw["network_mode"] == "host"
    assert kw["mem_limit"] == "8g" and kw["nano_cpus"] == 2_500_000_000
    assert kw["labels"] == {"modelgate.owner": "gw"}
    (req,) = kw["device_requests"]
    assert req["Count"] == -1 and req["Capabilities"] == [["gpu"]]


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

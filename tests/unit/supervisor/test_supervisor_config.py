"""What the supervisor takes from the environment, read once at load: the Docker API's address
and what children inherit; its instance name and the lock that keeps two gateways apart."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from modelgate.config import DOCKER_SOCKET, build_config, choose_docker_host, docker_hosts
from modelgate.errors import ConfigError
from modelgate.supervisor.errors import InstanceTaken
from modelgate.supervisor.ownership import InstanceLock
from modelgate.supervisor.supervisor import instance_name

ROOTFUL = "unix:///run/podman/podman.sock"


def test_docker_host_order() -> None:
    env = {"DOCKER_HOST": "tcp://10.0.0.1:2375", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert docker_hosts(env) == [
        ("tcp://10.0.0.1:2375", "DOCKER_HOST"),
        (ROOTFUL, "Podman's rootful socket"),
        ("unix:///run/user/1000/podman/podman.sock", "Podman's rootless socket"),
        (DOCKER_SOCKET, "Docker's socket"),
    ]
    assert docker_hosts({}, uid=1234)[1][0] == "unix:///run/user/1234/podman/podman.sock"


@pytest.mark.parametrize(
    ("environ", "present", "want"),
    [
        ({"DOCKER_HOST": "unix:///x.sock"}, {"/run/podman/podman.sock"}, ("unix:///x.sock", "DOCKER_HOST")),
        ({"DOCKER_HOST": ""}, {"/run/podman/podman.sock"}, (ROOTFUL, "Podman's rootful socket")),
        (
            {"XDG_RUNTIME_DIR": "/r"},
            {"/r/podman/podman.sock", "/var/run/docker.sock"},
            ("unix:///r/podman/podman.sock", "Podman's rootless socket"),
        ),
        ({"XDG_RUNTIME_DIR": "/r"}, {"/var/run/docker.sock"}, (DOCKER_SOCKET, "Docker's socket")),
        ({"XDG_RUNTIME_DIR": "/r"}, set(), (DOCKER_SOCKET, "Docker's socket (default; no socket found)")),
    ],
)
def test_choose_docker_host(environ: dict[str, str], present: set[str], want: tuple[str, str]) -> None:
    assert choose_docker_host(environ, usable=present.__contains__) == want


def test_docker_host_from_a_real_socket_in_xdg_runtime_dir(tmp_path: Path) -> None:
    (tmp_path / "podman").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "podman" / "podman.sock"))
    try:
        env = {"XDG_RUNTIME_DIR": str(tmp_path)}
        url, origin = choose_docker_host(env)
        if origin != "Podman's rootful socket":  # this machine may run a rootful Podman
            assert (url, origin) == (f"unix://{tmp_path}/podman/podman.sock", "Podman's rootless socket")
    finally:
        sock.close()
    (tmp_path / "podman" / "plain").write_text("not a socket")
    assert choose_docker_host(env, usable=lambda p: False)[0] == DOCKER_SOCKET


def test_configured_docker_host_wins_over_the_environment() -> None:
    env = {"DOCKER_HOST": "unix:///env.sock"}
    cfg = build_config({"supervisor": {"docker_host": "unix:///cfg.sock"}}, source="t", environ=env)
    assert (cfg.supervisor.docker_url, cfg.supervisor.docker_host_from) == (
        "unix:///cfg.sock",
        "supervisor.docker_host",
    )
    cfg = build_config({}, source="t", environ=env)
    assert (cfg.supervisor.docker_url, cfg.supervisor.docker_host_from) == ("unix:///env.sock", "DOCKER_HOST")
    assert build_config({}, source="t", environ={}).supervisor.docker_url.startswith("unix://")
    from modelgate.config import SupervisorConfig

    assert SupervisorConfig().docker_host_from == "Docker's socket (default)"
    over = {**env, "MODELGATE_SUPERVISOR__DOCKER_HOST": "unix:///over.sock"}
    assert build_config({}, source="t", environ=over).supervisor.docker_url == "unix:///over.sock"


def test_child_env_is_a_small_safe_base() -> None:
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "CUDA_VISIBLE_DEVICES": "1",
        "UPSTREAM_KEY": "sk-upstream",  # named by an api_key_env: never inherited
        "AWS_SECRET_ACCESS_KEY": "aws",  # not in the list
        "HF_TOKEN": "hf",
        "PYTHONPATH": "/src",
        "MODELGATE_AUTH__API_KEYS": "[k]",
    }
    raw = {
        "models": [
            {
                "id": "m",
                "backend": "openai",
                "endpoints": [{"url": "http://127.0.0.1:1", "api_key_env": "UPSTREAM_KEY"}],
            }
        ]
    }
    cfg = build_config(raw, source="t", environ=environ)
    assert cfg.supervisor.child_env == {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "CUDA_VISIBLE_DEVICES": "1",
    }
    assert "child_env" not in cfg.model_dump()["supervisor"] and "sk-upstream" not in repr(cfg)
    # an operator may widen it, never to a key or MODELGATE_*
    raw["supervisor"] = {"inherit_env": ["PATH", "PYTHON*", "UPSTREAM_KEY"]}
    cfg = build_config(raw, source="t", environ=environ)
    assert cfg.supervisor.child_env == {"PATH": "/usr/bin", "PYTHONPATH": "/src"}


@pytest.mark.parametrize("names", [["MODELGATE_AUTH__API_KEYS"], ["MODEL*"], ["*"], ["modelgate_*"]])
def test_inherit_env_never_admits_modelgate_variables(names: list[str]) -> None:
    with pytest.raises(ConfigError, match="supervisor.inherit_env: .*never passed to children"):
        build_config({"supervisor": {"inherit_env": names}}, source="t", environ={})


@pytest.mark.parametrize("key", ["child_env", "docker_host_origin"])
def test_derived_fields_are_not_configurable(key: str) -> None:
    with pytest.raises(ConfigError, match=f"supervisor.{key}: set at load"):
        build_config({"supervisor": {key: {}}}, source="t", environ={})


def test_instance_from_bound_address_and_config_path(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("")
    (tmp_path / "b.yaml").write_text("")

    def name(path: str, host: str, port: int) -> str:
        cfg = build_config({"server": {"host": host, "port": port}}, source=path, environ={})
        return instance_name(cfg)

    a = str(tmp_path / "a.yaml")
    assert name(a, "127.0.0.1", 9001) == name(a, "127.0.0.1", 9001)
    assert name(a, "127.0.0.1", 9001).startswith("modelgate-127.0.0.1-9001-")
    assert name(a, "127.0.0.1", 9001) != name(a, "127.0.0.1", 9002)
    assert name(a, "127.0.0.1", 9001) != name(str(tmp_path / "b.yaml"), "127.0.0.1", 9001)
    assert name(a, "::1", 9001).startswith("modelgate-__1-9001-")
    explicit = build_config({"supervisor": {"instance": "gw-a"}}, source=a, environ={})
    assert instance_name(explicit) == "gw-a"


def test_instance_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    first, second = InstanceLock(tmp_path, "gw"), InstanceLock(tmp_path, "gw")
    first.acquire()
    with pytest.raises(InstanceTaken, match="another gateway already supervises as instance 'gw'"):
        second.acquire()
    other = InstanceLock(tmp_path, "other")
    other.acquire()  # another name is another lock
    other.release()
    first.release()
    second.acquire()
    assert second.held
    second.release()


def test_serve_claims_the_real_port_and_names_the_instance_by_it() -> None:
    from modelgate.serve import _claim, bound

    port = _claim("127.0.0.1", 0, reuse_port=False)  # port 0: the one really bound, picked now
    assert port > 0
    cfg = bound(build_config({"server": {"port": 8000}}, source="<x>", environ={}), "127.0.0.1", port)
    assert cfg.server.port == port
    assert instance_name(cfg).startswith(f"modelgate-127.0.0.1-{port}-")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{taken}"):
            _claim("127.0.0.1", taken, reuse_port=False)


def test_check_says_which_docker_api(tmp_path: Path) -> None:
    import io

    from modelgate.check import run_check

    launch = {"kind": "container", "image": "busybox", "ports": {"80": 1}}
    raw = {
        "health": {"timeout_s": 0.2},
        "models": [
            {"id": "m", "backend": "openai", "endpoints": [{"url": "http://127.0.0.1:1", "launch": launch}]}
        ],
    }
    cfg = build_config(raw, source="t", environ={"DOCKER_HOST": f"unix://{tmp_path}/d.sock"})
    out = io.StringIO()
    run_check(cfg, out=out)
    assert f"containers: Docker API at unix://{tmp_path}/d.sock (from DOCKER_HOST)" in out.getvalue()
    out = io.StringIO()
    run_check(cfg, as_json=True, out=out)
    assert '"docker_host":{"url":"unix://' in out.getvalue() and '"from":"DOCKER_HOST"' in out.getvalue()

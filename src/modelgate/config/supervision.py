"""What the supervisor is told: launch specs, ports, the child environment, the Docker socket."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from modelgate.config.base import ENV_PREFIX, _collect_env_names, _Frozen
from modelgate.errors import ConfigError


class PortBinding(_Frozen):
    """Where a container port is published on the host: loopback unless an address is named."""

    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)  # 0: any free port

    @field_validator("host")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip("[]")
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address") from None
        return v


def _host_port(text: str) -> dict[str, Any]:
    """``"8082"`` | ``"127.0.0.1:8082"`` | ``"[::1]:8082"`` -> PortBinding fields."""
    host, sep, port = text.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"{text!r}: expected [ADDRESS:]PORT")
    return {"host": host, "port": int(port)} if sep else {"port": int(port)}


def _port_bindings(value: Any) -> Any:
    """``ports`` as a mapping (container port -> host port, "ADDRESS:PORT" or {host, port}) or
    as Docker's strings ("[ADDRESS:]HOSTPORT:CONTAINERPORT[/proto]"), into one mapping."""
    if isinstance(value, list | tuple):
        out: dict[str, Any] = {}
        for item in value:
            head, sep, container = str(item).rpartition(":")
            if not sep or not head:
                raise ValueError(f"{item!r}: expected [ADDRESS:]HOSTPORT:CONTAINERPORT")
            out[container] = _host_port(head)
        return out
    if isinstance(value, Mapping):
        return {
            str(k): (
                {"port": v}
                if isinstance(v, int) and not isinstance(v, bool)
                else _host_port(v)
                if isinstance(v, str)
                else v
            )
            for k, v in value.items()
        }
    return value


class LaunchSpec(_Frozen):
    kind: Literal["process", "container"]
    command: tuple[str, ...] = ()
    # the child's whole environment beyond supervisor.inherit_env (processes) or the image's (containers)
    env: Mapping[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    # container only
    image: str | None = None
    volumes: Mapping[str, Mapping[str, str]] = Field(default_factory=dict)
    # container port -> host port, published on 127.0.0.1 unless an address is named:
    # {"80/tcp": 8082} | {"80": "0.0.0.0:8082"} | {"80": {host: "::1", port: 8082}} | ["127.0.0.1:8082:80"]
    ports: Mapping[str, PortBinding] = Field(default_factory=dict)
    gpus: str | int | None = None
    memory: str | None = None
    cpus: float | None = None
    network_mode: str | None = None
    luks_volume: str | None = None  # container path where the model's LUKS mount is bound (ro)
    # lifecycle
    start_timeout_s: float = Field(300.0, gt=0)
    stop_timeout_s: float = Field(10.0, ge=0)
    max_restarts: int = Field(5, ge=0)
    backoff_base_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _by_kind(self) -> LaunchSpec:
        if self.kind == "container" and not self.image:
            raise ValueError("a container launch needs 'image'")
        if self.kind == "process" and not self.command:
            raise ValueError("a process launch needs 'command'")
        return self

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        return _port_bindings(value)


# a launched process's environment from the gateway's: enough to find programs, locales and
# devices; no credentials (PYTHONPATH, HF_*, AWS_* ... go in launch.env or inherit_env)
INHERIT_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
)
DOCKER_SOCKET = "unix:///var/run/docker.sock"


class SupervisorConfig(_Frozen):
    """What the supervisor needs beyond each endpoint's ``launch:``."""

    # None: found at load (docker_hosts): DOCKER_HOST, Podman's rootful then rootless socket, Docker's
    docker_host: str | None = None
    docker_host_origin: str | None = Field(None, exclude=True)  # set at load: see docker_host_from
    # what launched processes get from the gateway's environment (names, or PREFIX*), never
    # MODELGATE_* nor a variable some *_env field names; launch.env adds to it
    inherit_env: tuple[str, ...] = INHERIT_ENV
    # the values of inherit_env, read at load (build_config); not configurable
    child_env: Mapping[str, str] = Field(default_factory=dict, repr=False, exclude=True)
    state_dir: str | None = None  # process state records; None: ~/.local/state/modelgate/supervisor
    # the modelgate.owner label / state-record owner; unique per gateway on a host.
    # None: derived from the address the gateway really binds and the config file's path
    instance: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    reap_interval_s: float = Field(60.0, gt=0)
    health_interval_s: float = Field(2.0, gt=0)
    health_timeout_s: float = Field(1.0, gt=0)
    degraded_after: int = Field(2, ge=1)  # failed health probes in a row: degraded
    restart_after: int = Field(5, ge=1)  # failed health probes in a row: restart
    stable_after_s: float = Field(60.0, ge=0)  # ready this long resets the crash-loop count
    backoff_jitter: float = Field(0.2, ge=0, le=1)
    log_lines: int = Field(50, ge=1)

    @field_validator("inherit_env")
    @classmethod
    def _never_ours(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            prefix = name.upper().removesuffix("*")
            if prefix.startswith(ENV_PREFIX) or (name.endswith("*") and ENV_PREFIX.startswith(prefix)):
                raise ValueError(f"{name!r}: MODELGATE_* variables are never passed to children")
        return names

    @property
    def docker_url(self) -> str:
        return self.docker_host or DOCKER_SOCKET

    @property
    def docker_host_from(self) -> str:
        """Where ``docker_url`` came from, for the log and ``modelgate check``."""
        if self.docker_host_origin:
            return self.docker_host_origin
        return "supervisor.docker_host" if self.docker_host else "Docker's socket (default)"


def _usable_socket(path: str) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.stat(path).st_mode) and os.access(path, os.R_OK | os.W_OK)
    except OSError:
        return False


def docker_hosts(environ: Mapping[str, str], uid: int | None = None) -> list[tuple[str, str]]:
    """Where the Docker Engine API may be, in order, as (url, where it came from): DOCKER_HOST,
    Podman's rootful socket, Podman's rootless one (``$XDG_RUNTIME_DIR``), Docker's."""
    out = []
    if environ.get("DOCKER_HOST"):
        out.append((environ["DOCKER_HOST"], "DOCKER_HOST"))
    runtime = environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid() if uid is None else uid}"
    out.append(("unix:///run/podman/podman.sock", "Podman's rootful socket"))
    out.append((f"unix://{runtime}/podman/podman.sock", "Podman's rootless socket"))
    out.append((DOCKER_SOCKET, "Docker's socket"))
    return out


def choose_docker_host(environ: Mapping[str, str], usable: Any = _usable_socket) -> tuple[str, str]:
    """The first of ``docker_hosts`` that is set (DOCKER_HOST) or a socket we may use."""
    for url, origin in docker_hosts(environ):
        if origin == "DOCKER_HOST" or usable(url.removeprefix("unix://")):
            return url, origin
    return DOCKER_SOCKET, "Docker's socket (default; no socket found)"


def _child_env(patterns: tuple[str, ...], environ: Mapping[str, str], secret: set[str]) -> dict[str, str]:
    def wanted(name: str) -> bool:
        return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)

    return {
        k: v
        for k, v in environ.items()
        if wanted(k) and not k.upper().startswith(ENV_PREFIX) and k not in secret
    }


def _supervisor_env(data: dict[str, Any], environ: Mapping[str, str], source: str) -> None:
    """What the supervisor needs from the environment, read here once: the Docker API's
    address when the config names none, and the environment children inherit."""
    sup = data.get("supervisor", {})
    if not isinstance(sup, dict):
        return  # pydantic names the problem
    data["supervisor"] = sup = dict(sup)  # the caller's mapping stays as it was
    for derived in ("child_env", "docker_host_origin"):
        if derived in sup:
            raise ConfigError(f"{source}: supervisor.{derived}: set at load, not configurable")
    if not sup.get("docker_host"):
        sup["docker_host"], sup["docker_host_origin"] = choose_docker_host(environ)
    patterns = sup.get("inherit_env", INHERIT_ENV)
    if isinstance(patterns, list | tuple):
        sup["child_env"] = _child_env(tuple(map(str, patterns)), environ, _collect_env_names(data))

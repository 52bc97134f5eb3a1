"""The one boundary to the Docker Engine API (``docker`` SDK; Podman's compatible API works the same).

Every call crosses into a thread here (``asyncio.to_thread``), and every
``docker.errors`` / connection exception is translated into a SupervisorError
subclass here.  Nothing else in modelgate imports ``docker``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from modelgate.supervisor.errors import ContainerApiError, ContainerNotFound, DockerUnavailable, ImageNotFound

T = TypeVar("T")


def _translate(exc: Exception, what: str) -> Exception:
    import docker.errors
    import requests.exceptions

    if isinstance(exc, docker.errors.ImageNotFound):
        return ImageNotFound(f"{what}: image not found: {exc.explanation or exc}")
    if isinstance(exc, docker.errors.NotFound):
        return ContainerNotFound(f"{what}: {exc.explanation or exc}")
    if isinstance(exc, docker.errors.APIError):
        return ContainerApiError(f"{what}: {exc.explanation or exc}")
    if isinstance(exc, requests.exceptions.RequestException | docker.errors.DockerException | OSError):
        return DockerUnavailable(f"{what}: the Docker/Podman API is unreachable: {exc}")
    return ContainerApiError(f"{what}: {exc}")


class DockerApi:
    """Async facade over a ``docker.DockerClient`` bound to ``base_url``."""

    def __init__(self, base_url: str, *, timeout_s: float = 60.0):
        self.base_url = base_url
        self._timeout_s = timeout_s
        self._client: Any = None

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def run() -> T:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                raise _translate(exc, what) from exc

        return await asyncio.to_thread(run)

    async def connect(self) -> None:
        if self._client is not None:
            return

        def make() -> Any:
            import docker

            client = docker.DockerClient(base_url=self.base_url, timeout=int(self._timeout_s))
            client.ping()
            return client

        self._client = await self._call(f"connect {self.base_url}", make)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)

    @property
    def client(self) -> Any:
        if self._client is None:
            raise DockerUnavailable(f"not connected to {self.base_url}")
        return self._client

    async def run(self, image: str, **kwargs: Any) -> Any:
        return await self._call(f"run {image}", self.client.containers.run, image, detach=True, **kwargs)

    async def get(self, container_id: str) -> Any:
        return await self._call(f"inspect {container_id[:12]}", self.client.containers.get, container_id)

    async def list_labelled(self, labels: dict[str, str]) -> list[Any]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        return await self._call("list containers", self.client.containers.list, all=True, filters=filters)

    async def status(self, container: Any) -> tuple[str, int | None]:
        """(status, exit code) after a fresh inspect."""
        await self._call(f"inspect {container.id[:12]}", container.reload)
        state = container.attrs.get("State", {})
        return str(state.get("Status", container.status)), state.get("ExitCode")

    async def stop(self, container: Any, timeout_s: float) -> None:
        await self._call(f"stop {container.id[:12]}", container.stop, timeout=max(0, round(timeout_s)))

    async def kill(self, container: Any) -> None:
        await self._call(f"kill {container.id[:12]}", container.kill)

    async def remove(self, container: Any) -> None:
        await self._call(f"remove {container.id[:12]}", container.remove, force=True, v=True)

    async def logs(self, container: Any, lines: int) -> list[str]:
        raw = await self._call(
            f"logs {container.id[:12]}", container.logs, tail=lines, stdout=True, stderr=True
        )
        return bytes(raw).decode("utf-8", "replace").splitlines()[-lines:]

"""The seam to the storage layer for container endpoints whose model lives on a LUKS volume.

The supervisor never runs cryptsetup itself: it asks the storage manager
(``modelgate.storage.manager.StorageManager``) to open and mount the model's
volume (``acquire``, counted), bind-mounts the mount point read-only into the
container at ``launch.luks_volume``, and gives it back once the container has
stopped (``release``: the last user out unmounts and closes).
"""

from __future__ import annotations

import os
from typing import Protocol

from modelgate.errors import ModelGateError
from modelgate.supervisor.errors import VolumeError


class ModelVolumes(Protocol):
    async def acquire(self, model_id: str) -> os.PathLike[str] | str:
        """Open and mount the model's volume read-only (counting one user); the host mount path."""
        ...

    async def release(self, model_id: str) -> None:
        """One user fewer; the last one unmounts and closes the volume."""
        ...


async def open_volume(storage: ModelVolumes, model_id: str) -> str:
    try:
        return os.fspath(await storage.acquire(model_id))
    except ModelGateError as exc:
        raise VolumeError(f"model {model_id!r}: cannot open its volume: {exc.message}") from exc


async def close_volume(storage: ModelVolumes, model_id: str) -> None:
    try:
        await storage.release(model_id)
    except ModelGateError as exc:
        raise VolumeError(f"model {model_id!r}: cannot close its volume: {exc.message}") from exc

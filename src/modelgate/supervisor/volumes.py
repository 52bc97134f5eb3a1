"""The seam to the storage layer for container endpoints whose model lives on a LUKS volume.

The supervisor never runs cryptsetup itself: it asks the storage manager to open
and mount the model's volume, bind-mounts the mount point read-only into the
container at ``launch.luks_volume``, and asks it to close the volume once the
container has stopped.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

from modelgate.errors import ModelGateError
from modelgate.supervisor.errors import VolumeError


class ModelVolumes(Protocol):
    """What the supervisor needs from the storage manager."""

    async def open_model(self, model_id: str) -> str:
        """Open and mount the model's volume read-only; return the host mount path."""
        ...

    async def close_model(self, model_id: str) -> None:
        """Unmount and close the model's volume."""
        ...


_OPEN_NAMES = ("open_model", "open_volume", "mount_model", "open")
_CLOSE_NAMES = ("close_model", "close_volume", "unmount_model", "close")


async def _call_first(storage: Any, names: tuple[str, ...], model_id: str) -> Any:
    for name in names:
        fn = getattr(storage, name, None)
        if callable(fn):
            result = fn(model_id)
            return await result if inspect.isawaitable(result) else result
    raise VolumeError(f"the storage manager has none of {', '.join(names)}")


async def open_volume(storage: Any, model_id: str) -> str:
    try:
        path = await _call_first(storage, _OPEN_NAMES, model_id)
    except VolumeError:
        raise
    except ModelGateError as exc:
        raise VolumeError(f"model {model_id!r}: cannot open its volume: {exc.message}") from exc
    return str(path)


async def close_volume(storage: Any, model_id: str) -> None:
    try:
        await _call_first(storage, _CLOSE_NAMES, model_id)
    except VolumeError:
        raise
    except ModelGateError as exc:
        raise VolumeError(f"model {model_id!r}: cannot close its volume: {exc.message}") from exc

"""StorageManager: opens every model's storage at start, reports it, closes it at shutdown.

- ``sealed``: a local model whose ``path`` is a sealed directory.  Opening checks
  the key, the keys file, the manifest and every object's header and length
  (state ``verified``); the engine authenticates every segment as it loads.
- ``luks``: a model with ``storage: {kind: luks, ...}``.  Opening checks that
  device-mapper exists (else ``failed`` naming the reason, at start), that the
  device is LUKS, opens it read-only, mounts it read-only (state ``mounted``).
  ``acquire``/``release`` count users; the last ``release`` unmounts and closes.

Failures never raise out of ``open_all``: the model's state is ``failed`` with
the reason, and the gateway reports it as not ready.  cryptsetup runs in a thread.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelgate.config import Config, ModelConfig, StorageSpec
from modelgate.errors import ModelGateError, StorageError
from modelgate.storage.errors import LuksNotLuks, NoDeviceMapper
from modelgate.storage.keys import load_key, load_secret
from modelgate.storage.luks import DM_CONTROL, Cryptsetup, device_mapper_problem
from modelgate.storage.sealed import is_sealed, open_sealed


@dataclass
class _Entry:
    model: ModelConfig
    kind: str  # "sealed" | "luks"
    state: str = "pending"  # pending | verified | open | mounted | closed | failed
    detail: str = ""
    users: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "state": self.state, "detail": self.detail}
        if self.kind == "luks" and self.model.storage is not None:
            out["mount"] = self.model.storage.mount
        return out


def storage_kind(model: ModelConfig) -> Literal["luks", "sealed"] | None:
    """The one place that decides whether a model needs storage, and which."""
    if model.storage is not None:
        return "luks"
    if model.in_process and model.path and is_sealed(model.path):
        return "sealed"
    return None


def needs_storage(config: Config) -> bool:
    return any(storage_kind(m) is not None for m in config.models)


def mapper_name(model_id: str) -> str:
    return "modelgate-" + re.sub(r"[^A-Za-z0-9_.-]", "_", model_id)[:100]


class StorageManager:
    """Owns the storage of every configured model; created in the app's lifespan."""

    def __init__(
        self, config: Config, *, cryptsetup: Cryptsetup | None = None, dm_control: str = DM_CONTROL
    ) -> None:
        self._config = config
        self._cs = cryptsetup or Cryptsetup()
        self._dm_control = dm_control
        self._entries: dict[str, _Entry] = {}
        for m in config.models:
            kind = storage_kind(m)
            if kind is not None:
                self._entries[m.id] = _Entry(m, kind)

    # -- lifecycle -------------------------------------------------------------------

    async def open_all(self) -> dict[str, dict[str, Any]]:
        """Open every model's storage; returns the status of those that failed."""
        await asyncio.gather(*(self._open(e) for e in self._entries.values()))
        return {k: v for k, v in self.status().items() if v["state"] == "failed"}

    async def close_all(self) -> None:
        """Unmount and close every open volume (users or not); errors end up in the status."""
        await asyncio.gather(*(self._close(e) for e in self._entries.values()))

    async def acquire(self, model_id: str) -> Path:
        """Count one user of a LUKS model's volume (opening it if needed); its mount path."""
        e = self._entry(model_id)
        await self._open(e)
        if e.state != "mounted":
            raise StorageError(f"model {model_id!r}: storage is {e.state}: {e.detail}")
        e.users += 1
        return self.mount_path(model_id)

    async def release(self, model_id: str) -> None:
        """One user fewer; the last one out unmounts and closes the volume."""
        e = self._entry(model_id)
        e.users = max(0, e.users - 1)
        if e.users == 0:
            await self._close(e)

    async def probe_all(self) -> dict[str, dict[str, Any]]:
        """Check every model's storage without opening or mounting anything (for ``modelgate check``).

        sealed: key, manifest and headers verified; luks: device-mapper present, the
        device (or header) is LUKS and the key opens a keyslot (``--test-passphrase``).
        """
        results = await asyncio.gather(*(asyncio.to_thread(self._probe, e) for e in self._entries.values()))
        return dict(zip(self._entries, results, strict=True))

    def _probe(self, e: _Entry) -> dict[str, Any]:
        try:
            if e.kind == "sealed":
                self._verify_sealed(e.model)
                return {
                    "kind": "sealed",
                    "state": "verified",
                    "detail": "key, manifest and object headers verified",
                }
            spec = e.model.storage
            assert spec is not None
            key = load_secret(*self._key(spec.key_file, spec.key_env, spec.key_command))
            if not self._cs.is_luks(spec.device, spec.header):
                raise LuksNotLuks(f"{spec.header or spec.device} is not a LUKS volume")
            self._cs.test_key(spec.device, key, spec.header)
            problem = device_mapper_problem(self._dm_control)
            if problem:
                raise NoDeviceMapper(f"key opens {spec.device}, but device-mapper is unavailable: {problem}")
            return {"kind": "luks", "state": "verified", "detail": "LUKS volume, key opens a keyslot"}
        except ModelGateError as exc:
            return {"kind": e.kind, "state": "failed", "detail": f"{type(exc).__name__}: {exc.message}"}

    # -- queries ---------------------------------------------------------------------

    def status(self) -> dict[str, dict[str, Any]]:
        return {mid: e.view() for mid, e in self._entries.items()}

    def ready(self, model_id: str) -> bool:
        """False only for a model whose storage exists and is not usable."""
        e = self._entries.get(model_id)
        return e is None or e.state in ("verified", "mounted")

    def mount_path(self, model_id: str) -> Path:
        e = self._entry(model_id)
        if e.kind != "luks" or e.state != "mounted" or e.model.storage is None:
            raise StorageError(f"model {model_id!r}: no mounted volume (storage is {e.state}: {e.detail})")
        return Path(e.model.storage.mount)

    # -- internals -------------------------------------------------------------------

    def _entry(self, model_id: str) -> _Entry:
        try:
            return self._entries[model_id]
        except KeyError:
            raise StorageError(f"model {model_id!r} has no managed storage") from None

    async def _open(self, e: _Entry) -> None:
        async with e.lock:
            if e.state in ("verified", "mounted"):
                return
            try:
                if e.kind == "sealed":
                    await asyncio.to_thread(self._verify_sealed, e.model)
                    e.state, e.detail = "verified", "key, manifest and object headers verified"
                else:
                    assert e.model.storage is not None
                    await asyncio.to_thread(self._open_luks, e.model.id, e.model.storage)
                    e.state, e.detail = "mounted", f"open read-only and mounted at {e.model.storage.mount}"
            except ModelGateError as exc:
                e.state, e.detail = "failed", f"{type(exc).__name__}: {exc.message}"

    async def _close(self, e: _Entry) -> None:
        async with e.lock:
            if e.kind != "luks" or e.state not in ("mounted", "open"):
                return
            assert e.model.storage is not None
            try:
                await asyncio.to_thread(self._close_luks, e.model.id, e.model.storage, e.state == "mounted")
                e.state, e.detail, e.users = "closed", "unmounted and closed", 0
            except ModelGateError as exc:
                e.state, e.detail = "failed", f"close: {type(exc).__name__}: {exc.message}"

    def _key(
        self, file: str | None, env: str | None, command: tuple[str, ...] | None
    ) -> tuple[Any, Any, Any]:
        return file, (self._config.secret(env) if env else None), command

    def _verify_sealed(self, m: ModelConfig) -> None:
        key = load_key(*self._key(m.key_file, m.key_env, m.key_command))
        assert m.path is not None
        open_sealed(m.path, key).close()

    def _open_luks(self, model_id: str, spec: StorageSpec) -> None:
        problem = device_mapper_problem(self._dm_control)
        if problem:
            raise NoDeviceMapper(f"cannot open {spec.device}: device-mapper unavailable: {problem}")
        key = load_secret(*self._key(spec.key_file, spec.key_env, spec.key_command))
        if not self._cs.is_luks(spec.device, spec.header):
            raise LuksNotLuks(f"{spec.header or spec.device} is not a LUKS volume")
        name = spec.name or mapper_name(model_id)
        mapped = self._cs.open(spec.device, name, key, spec.header)
        try:
            self._cs.mount(mapped, spec.mount)
        except StorageError:
            self._cs.close(name)
            raise

    def _close_luks(self, model_id: str, spec: StorageSpec, mounted: bool) -> None:
        if mounted:
            self._cs.umount(spec.mount)
        self._cs.close(spec.name or mapper_name(model_id))

"""A sealed model on disk, and the reader that decrypts it into memory only.

Layout (a directory; nothing in it names or sizes the original files)::

    DEST/MODELGATE-SEALED     marker: "modelgate sealed model, format 1"
    DEST/keys                 wrapped data keys (keyring.py)
    DEST/manifest             encrypted object: JSON {format, model_uid, files: [{name, object, size}]}
    DEST/objects/<32 hex>     one encrypted object per file, padded to 64 KiB (stream.py)

``open_sealed`` checks the key, the keys file, the manifest, and every object's
header, identity and length before it returns; each ``read`` authenticates every
segment of that file before it hands back a single byte.  Plaintext lives only
in this process's memory: ``bytes``, or a sealed anonymous ``memfd`` that a
loader can mmap through ``/proc/self/fd/N`` (one copy of the weights).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from modelgate.storage.errors import SealedFormatError, SealedIntegrityError
from modelgate.storage.keyring import Keyring, key_id, unwrap, wrap
from modelgate.storage.keys import disable_core_dumps
from modelgate.storage.stream import (
    HEADER_LEN,
    ObjectHeader,
    decrypt_object,
    object_file_len,
)

MARKER = "MODELGATE-SEALED"
MARKER_TEXT = b"modelgate sealed model, format 1\n"
KEYS = "keys"
MANIFEST = "manifest"
OBJECTS = "objects"
MANIFEST_ID = bytes(16)
_MEMFD_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL

Progress = Callable[[int], object]


def _no_progress(_: int) -> None:
    return None


def _discard(_: memoryview) -> None:
    return None


def is_sealed(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a sealed model directory (by its marker; no key needed)."""
    return (Path(path) / MARKER).is_file()


@dataclass(frozen=True)
class SealedFile:
    name: str
    object_id: bytes
    size: int


def check_name(name: Any) -> str:
    """A manifest name must be a plain relative path inside the model directory."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise SealedIntegrityError(f"manifest: unsafe file name {name!r}")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise SealedIntegrityError(f"manifest: unsafe file name {name!r}")
    return name


def _parse_manifest(raw: bytes, model_uid: bytes) -> dict[str, SealedFile]:
    try:
        doc = json.loads(raw.rstrip(b"\x00"))
        if doc["format"] != 1:
            raise SealedFormatError(f"manifest: unsupported format {doc['format']!r}")
        if bytes.fromhex(doc["model_uid"]) != model_uid:
            raise SealedIntegrityError("manifest: belongs to another sealed model")
        files = [
            SealedFile(check_name(f["name"]), bytes.fromhex(f["object"]), int(f["size"]))
            for f in doc["files"]
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise SealedIntegrityError(f"manifest: malformed ({type(exc).__name__})") from None
    out = {f.name: f for f in files}
    if len(out) != len(files) or any(len(f.object_id) != 16 or f.size < 0 for f in files):
        raise SealedIntegrityError("manifest: duplicate names or bad entries")
    return out


class SealedModel:
    """An opened sealed model: ``names()``, ``read(name)``, ``memfd_path(name)``; the engine's ModelFiles."""

    def __init__(self, root: Path, kek: bytes) -> None:
        self.root = root
        self._kek = kek
        where = f"{root}/{KEYS}"
        try:
            self._keyring = Keyring.unpack((root / KEYS).read_bytes(), where)
        except FileNotFoundError:
            raise SealedFormatError(f"{root}: not a sealed model (no keys file)") from None
        self._keyring.check_key(kek, str(root))
        self.model_uid = self._keyring.model_uid
        self._keys: dict[bytes, tuple[ObjectHeader, bytes]] = {}
        manifest = self._decrypt(root / MANIFEST, MANIFEST_ID, None, "manifest")
        self._files = _parse_manifest(manifest, self.model_uid)
        if len(self._keyring.entries) != len(self._files) + 1:
            raise SealedIntegrityError(f"{where}: keys file and manifest disagree on the number of files")
        for f in self._files.values():
            self._open_object(self._object_path(f), f.object_id, f.size, f.name)
        self._memfds: dict[str, int] = {}

    # -- ModelFiles ------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._files)

    def size(self, name: str) -> int:
        return self._file(name).size

    def read(self, name: str, progress: Progress = _no_progress) -> bytes:
        """The whole file, authenticated, as bytes (briefly two copies: prefer memfd for weights)."""
        return bytes(self._read_into_buffer(name, progress))

    def read_buffer(self, name: str, progress: Progress = _no_progress) -> bytearray:
        """The whole file, authenticated, in one new bytearray (one copy; zero-copy views possible)."""
        return self._read_into_buffer(name, progress)

    def open_memfd(self, name: str, progress: Progress = _no_progress) -> int:
        """A new sealed memfd (no write, grow or shrink) holding the file; the caller closes the fd."""
        f = self._file(name)
        fd = os.memfd_create(
            f"modelgate-sealed-{f.object_id.hex()[:8]}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        )
        try:
            self._decrypt(
                self._object_path(f), f.object_id, f.size, name, lambda b: _write_all(fd, b), progress
            )
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _MEMFD_SEALS)
            os.lseek(fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def memfd_path(self, name: str, progress: Progress = _no_progress) -> str:
        """``/proc/self/fd/N`` of a sealed memfd with the file (kept until ``close``); mmap it to load."""
        if name not in self._memfds:
            self._memfds[name] = self.open_memfd(name, progress)
        return f"/proc/self/fd/{self._memfds[name]}"

    def verify(self, progress: Progress = _no_progress) -> int:
        """Authenticate every byte of every file without keeping plaintext; returns the bytes checked."""
        for name in self.names():
            f = self._file(name)
            self._decrypt(self._object_path(f), f.object_id, f.size, name, _discard, progress)
        return sum(f.size for f in self._files.values())

    def rewrapped(self, new_kek: bytes) -> Keyring:
        """A keys file with every data key of this model wrapped under ``new_kek`` (for rekey)."""
        entries = {oid: wrap(new_kek, header, dk) for oid, (header, dk) in self._keys.items()}
        return Keyring(self.model_uid, key_id(new_kek, self.model_uid), entries)

    def close(self) -> None:
        for fd in self._memfds.values():
            os.close(fd)
        self._memfds.clear()
        self._keys.clear()
        self._kek = b""

    def __enter__(self) -> SealedModel:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------

    def _file(self, name: str) -> SealedFile:
        try:
            return self._files[name]
        except KeyError:
            raise FileNotFoundError(f"{name} is not in the sealed model") from None

    def _object_path(self, f: SealedFile) -> Path:
        return self.root / OBJECTS / f.object_id.hex()

    def _read_into_buffer(self, name: str, progress: Progress) -> bytearray:
        f = self._file(name)
        buf = bytearray(f.size)
        with memoryview(buf) as view:
            self._decrypt(self._object_path(f), f.object_id, f.size, name, view, progress)
        return buf

    def _open_object(self, path: Path, object_id: bytes, size: int | None, name: str) -> ObjectHeader:
        """Check the object's header, identity and length; unwrap its data key (cached)."""
        where = f"{self.root}: {name}"
        try:
            with path.open("rb") as fh:
                header = ObjectHeader.unpack(fh.read(HEADER_LEN), where)
                length = os.fstat(fh.fileno()).st_size
        except FileNotFoundError:
            raise SealedIntegrityError(f"{where}: object file is missing") from None
        if header.model_uid != self.model_uid:
            raise SealedIntegrityError(f"{where}: object belongs to another sealed model")
        if header.object_id != object_id:
            raise SealedIntegrityError(f"{where}: object file belongs to another file (swapped)")
        if size is not None and length != object_file_len(size, header.segment_size):
            raise SealedIntegrityError(f"{where}: object is truncated or extended")
        data_key = unwrap(self._kek, header, self._keyring.entry(object_id, where), where)
        self._keys[object_id] = (header, data_key)
        return header

    def _decrypt(
        self,
        path: Path,
        object_id: bytes,
        size: int | None,
        name: str,
        sink: Callable[[memoryview], object] | memoryview | None = None,
        progress: Progress = _no_progress,
    ) -> bytes:
        """Decrypt one object to ``sink``; with no sink (the manifest), return its bytes."""
        if object_id not in self._keys:
            self._open_object(path, object_id, size, name)
        header, data_key = self._keys[object_id]
        where = f"{self.root}: {name}"
        parts: list[bytes] = []
        with path.open("rb") as fh:
            if size is None:  # the manifest: its size is its object length minus the overhead
                size = _manifest_size(os.fstat(fh.fileno()).st_size, header.segment_size, where)
            decrypt_object(
                fh, header, data_key, size, sink or (lambda b: parts.append(bytes(b))), where, progress
            )
        return b"".join(parts)


def _manifest_size(file_len: int, segment_size: int, where: str) -> int:
    """The manifest's padded length (the padding is NUL bytes, stripped before parsing)."""
    body = file_len - HEADER_LEN
    per = segment_size + 16
    size = (body // per) * segment_size + max(0, body % per - 16)
    if size < 0 or object_file_len(size, segment_size) != file_len:
        raise SealedIntegrityError(f"{where}: object is truncated or extended")
    return size


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def open_sealed(path: str | os.PathLike[str], key: bytes) -> SealedModel:
    """Open a sealed model with its 32-byte key; checks everything but the segment tags up front."""
    disable_core_dumps()  # whoever loaded the key, this process now holds it
    root = Path(path)
    if not root.is_dir() or not (root / MARKER).is_file():
        raise SealedFormatError(f"{root}: not a sealed model (no {MARKER} marker)")
    return SealedModel(root, key)

"""seal, unseal, verify, rekey: whole-model operations on the sealed format.

``seal`` writes into a hidden sibling directory and renames it into place, so a
crash never leaves a half-sealed model under the destination name.  ``rekey``
rewrites only the ``keys`` file (atomically); the weights are not re-encrypted.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from modelgate.storage.errors import SealedFormatError
from modelgate.storage.keyring import Keyring, key_id, wrap, write_atomic
from modelgate.storage.sealed import (
    KEYS,
    MANIFEST,
    MANIFEST_ID,
    MARKER,
    MARKER_TEXT,
    OBJECTS,
    Progress,
    SealedModel,
    check_name,
    open_sealed,
)
from modelgate.storage.stream import ObjectHeader, encrypt_object

PROGRESS_MIN_BYTES = 16 << 20


@dataclass(frozen=True)
class Summary:
    files: int
    bytes: int


@contextmanager
def progress_bar(total: int, desc: str, show: bool | None = None) -> Iterator[Progress]:
    """A tqdm bar on stderr: shown when ``show`` (default: stderr is a TTY and the work is large)."""
    import sys

    if show is None:
        show = sys.stderr.isatty() and total >= PROGRESS_MIN_BYTES
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not show, file=sys.stderr) as bar:
        yield bar.update


def source_files(src: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``src`` (symlinks to files followed), as (relative name, path)."""
    if not src.is_dir():
        raise SealedFormatError(f"{src}: not a directory")
    out = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if p.is_file():
                out.append((check_name(p.relative_to(src).as_posix()), p))
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_object(
    path: Path, src_path: Path | None, data: bytes | None, header: ObjectHeader, progress: Progress
) -> bytes:
    """Encrypt one file (or in-memory ``data``) into ``path``; returns the new data key."""
    import io

    data_key = os.urandom(32)
    with path.open("xb") as out:
        if src_path is not None:
            with src_path.open("rb") as src:
                encrypt_object(src, os.fstat(src.fileno()).st_size, out, header, data_key, progress)
        else:
            assert data is not None
            encrypt_object(io.BytesIO(data), len(data), out, header, data_key, progress)
        out.flush()
        os.fsync(out.fileno())
    return data_key


def seal(
    src: str | os.PathLike[str], dest: str | os.PathLike[str], kek: bytes, show: bool | None = None
) -> Summary:
    """Seal the model directory ``src`` into the new directory ``dest``."""
    src_p, dest_p = Path(src), Path(dest)
    if dest_p.exists():
        raise SealedFormatError(f"{dest_p} already exists")
    files = source_files(src_p)
    sizes = {name: p.stat().st_size for name, p in files}
    tmp = dest_p.with_name(f".{dest_p.name}.sealing-{os.getpid()}")
    (tmp / OBJECTS).mkdir(parents=True)
    try:
        model_uid = os.urandom(16)
        entries, manifest = [], []
        with progress_bar(sum(sizes.values()), f"seal {src_p.name}", show) as progress:
            for name, p in files:
                header = ObjectHeader.new(model_uid, os.urandom(16))
                dk = _write_object(tmp / OBJECTS / header.object_id.hex(), p, None, header, progress)
                entries.append(wrap(kek, header, dk))
                manifest.append({"name": name, "object": header.object_id.hex(), "size": sizes[name]})
        doc = {"format": 1, "model_uid": model_uid.hex(), "files": manifest}
        header = ObjectHeader.new(model_uid, MANIFEST_ID)
        dk = _write_object(tmp / MANIFEST, None, json.dumps(doc).encode(), header, lambda _: None)
        entries.insert(0, wrap(kek, header, dk))
        keyring = Keyring(model_uid, key_id(kek, model_uid), {e.object_id: e for e in entries})
        write_atomic(tmp / KEYS, keyring.pack())
        write_atomic(tmp / MARKER, MARKER_TEXT)
        _fsync_dir(tmp / OBJECTS)
        os.rename(tmp, dest_p)
        _fsync_dir(dest_p.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Summary(len(files), sum(sizes.values()))


def unseal(
    src: str | os.PathLike[str], dest: str | os.PathLike[str], kek: bytes, show: bool | None = None
) -> Summary:
    """Write the plaintext model of sealed ``src`` into the new directory ``dest`` (mode 0700)."""
    dest_p = Path(dest)
    if dest_p.exists():
        raise SealedFormatError(f"{dest_p} already exists")
    tmp = dest_p.with_name(f".{dest_p.name}.unsealing-{os.getpid()}")
    tmp.mkdir(mode=0o700, parents=True)
    try:
        with open_sealed(src, kek) as model, progress_bar(_total(model), "unseal", show) as progress:
            for name in model.names():
                out = tmp / name
                out.parent.mkdir(parents=True, exist_ok=True)
                fd = model.open_memfd(name, progress)  # authenticated in full before a byte hits disk
                try:
                    with os.fdopen(fd, "rb", closefd=False) as src_f, out.open("xb") as out_f:
                        shutil.copyfileobj(src_f, out_f, 1 << 20)
                finally:
                    os.close(fd)
            summary = Summary(len(model.names()), _total(model))
        os.rename(tmp, dest_p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def verify(src: str | os.PathLike[str], kek: bytes, show: bool | None = None) -> Summary:
    """Authenticate every byte of a sealed model; raises on the first problem."""
    with open_sealed(src, kek) as model, progress_bar(_total(model), "verify", show) as progress:
        n = model.verify(progress)
        return Summary(len(model.names()), n)


def rekey(src: str | os.PathLike[str], old_kek: bytes, new_kek: bytes) -> Summary:
    """Rewrap every data key under ``new_kek``; only the keys file changes."""
    root = Path(src)
    with open_sealed(root, old_kek) as model:
        keyring = model.rewrapped(new_kek)
        summary = Summary(len(model.names()), _total(model))
    write_atomic(root / KEYS, keyring.pack())
    return summary


def _total(model: SealedModel) -> int:
    return sum(model.size(n) for n in model.names())

"""The ``keys`` file of a sealed model: every object's data key, wrapped by the KEK.

Layout: magic ``MGKEYS``, version (u16), key id (16), model uid (16), count (u32),
then ``count`` entries of object id (16) || nonce (12) || AES-256-GCM(KEK, data
key, AAD = label || that object's header) (48).  The key id is HKDF(KEK, salt =
model uid) truncated, so a wrong key is told apart from a modified object.
``rekey`` rewrites only this file (write to a temporary name, fsync, rename).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modelgate.storage.errors import SealedFormatError, SealedIntegrityError, WrongKey
from modelgate.storage.stream import VERSION, ObjectHeader

KEYS_MAGIC = b"MGKEYS"
_HEAD = struct.Struct(">6sH16s16sI")
_ENTRY = struct.Struct(">16s12s48s")
_WRAP_LABEL = b"modelgate-sealed-v1/wrap"
_KEY_ID_LABEL = b"modelgate-sealed-v1/key-id"


def key_id(kek: bytes, model_uid: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=16, salt=model_uid, info=_KEY_ID_LABEL).derive(kek)


@dataclass(frozen=True)
class WrappedKey:
    object_id: bytes
    nonce: bytes
    wrapped: bytes


def wrap(kek: bytes, header: ObjectHeader, data_key: bytes) -> WrappedKey:
    nonce = os.urandom(12)
    return WrappedKey(
        header.object_id, nonce, AESGCM(kek).encrypt(nonce, data_key, _WRAP_LABEL + header.pack())
    )


def unwrap(kek: bytes, header: ObjectHeader, entry: WrappedKey, where: str) -> bytes:
    try:
        return AESGCM(kek).decrypt(entry.nonce, entry.wrapped, _WRAP_LABEL + header.pack())
    except InvalidTag:
        raise SealedIntegrityError(
            f"{where}: data key does not unwrap (header or keys file modified)"
        ) from None


@dataclass(frozen=True)
class Keyring:
    model_uid: bytes
    key_id: bytes
    entries: dict[bytes, WrappedKey]

    def pack(self) -> bytes:
        head = _HEAD.pack(KEYS_MAGIC, VERSION, self.key_id, self.model_uid, len(self.entries))
        return head + b"".join(_ENTRY.pack(e.object_id, e.nonce, e.wrapped) for e in self.entries.values())

    @classmethod
    def unpack(cls, data: bytes, where: str) -> Keyring:
        if len(data) < _HEAD.size or data[:6] != KEYS_MAGIC:
            raise SealedFormatError(f"{where}: not a sealed model keys file")
        _magic, version, kid, uid, count = _HEAD.unpack_from(data)
        if version != VERSION:
            raise SealedFormatError(f"{where}: unsupported sealed format version {version}")
        if len(data) != _HEAD.size + count * _ENTRY.size:
            raise SealedIntegrityError(f"{where}: keys file is truncated or extended")
        entries = {}
        for i in range(count):
            oid, nonce, wrapped = _ENTRY.unpack_from(data, _HEAD.size + i * _ENTRY.size)
            entries[oid] = WrappedKey(oid, nonce, wrapped)
        if len(entries) != count:
            raise SealedIntegrityError(f"{where}: keys file lists an object twice")
        return cls(uid, kid, entries)

    def check_key(self, kek: bytes, where: str) -> None:
        if key_id(kek, self.model_uid) != self.key_id:
            raise WrongKey(f"{where}: the key is not this sealed model's key (key id mismatch)")

    def entry(self, object_id: bytes, where: str) -> WrappedKey:
        try:
            return self.entries[object_id]
        except KeyError:
            raise SealedIntegrityError(f"{where}: no data key for this object in the keys file") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)

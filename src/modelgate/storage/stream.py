"""Segmented AEAD for one sealed object (Tink AES-GCM-HKDF streaming, adapted).

An object file is ``header || segment_0 || ... || segment_{n-1}``:

- ``header`` (83 bytes, bound into every key derivation and used as AAD):
  magic ``MGSEAL``, version (u16), segment size (u32), model uid (16 bytes),
  object id (16), salt (32), nonce prefix (7).
- The object's data key (32 random bytes) is wrapped by the key-encryption key
  elsewhere (``keyfile.py``) with this header as AAD.
- Segment key = HKDF-SHA256(data key, salt, info = label || header).
- Segment ``i`` = AES-256-GCM(segment key, nonce = prefix || u32 i || last-flag,
  plaintext of ``segment_size`` bytes (the last may be shorter, even empty),
  AAD = header) — 16-byte tag appended.

A flipped byte fails a tag; reordered segments fail (counter in the nonce);
truncation or extension fails the length check and the last-segment flag; an
object from another file or another model fails the header check and the unwrap.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modelgate.storage.errors import SealedFormatError, SealedIntegrityError

MAGIC = b"MGSEAL"
VERSION = 1
TAG = 16
SEGMENT_SIZE = 1 << 20
PAD = 64 << 10  # objects are padded to this multiple so their length hides the exact file size
_HEADER = struct.Struct(">6sHI16s16s32s7s")
HEADER_LEN = _HEADER.size
_SEGMENT_LABEL = b"modelgate-sealed-v1/segment-key"

Progress = Callable[[int], object]


@dataclass(frozen=True)
class ObjectHeader:
    segment_size: int
    model_uid: bytes
    object_id: bytes
    salt: bytes
    nonce_prefix: bytes
    version: int = VERSION

    @classmethod
    def new(cls, model_uid: bytes, object_id: bytes, segment_size: int = SEGMENT_SIZE) -> ObjectHeader:
        return cls(segment_size, model_uid, object_id, os.urandom(32), os.urandom(7))

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            self.version,
            self.segment_size,
            self.model_uid,
            self.object_id,
            self.salt,
            self.nonce_prefix,
        )

    @classmethod
    def unpack(cls, data: bytes, where: str) -> ObjectHeader:
        if len(data) < HEADER_LEN:
            raise SealedIntegrityError(f"{where}: truncated header")
        magic, version, seg, uid, oid, salt, prefix = _HEADER.unpack(data[:HEADER_LEN])
        if magic != MAGIC:
            raise SealedFormatError(f"{where}: not a sealed object (bad magic)")
        if version != VERSION:
            raise SealedFormatError(f"{where}: unsupported sealed format version {version}")
        if not 4096 <= seg <= 64 << 20:
            raise SealedIntegrityError(f"{where}: implausible segment size {seg}")
        return cls(seg, uid, oid, salt, prefix, version)


def segment_count(plain_len: int, segment_size: int) -> int:
    """Segments for ``plain_len`` bytes; an empty object still has one (empty, last) segment."""
    return max(1, -(-plain_len // segment_size))


def padded_len(size: int) -> int:
    return max(1, -(-size // PAD)) * PAD


def object_file_len(size: int, segment_size: int) -> int:
    plain = padded_len(size)
    return HEADER_LEN + plain + segment_count(plain, segment_size) * TAG


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= 1 << 32:
        raise SealedFormatError("object too large for its segment size")
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _segment_aead(data_key: bytes, header: ObjectHeader) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=header.salt, info=_SEGMENT_LABEL + header.pack())
    return AESGCM(hkdf.derive(data_key))


def encrypt_object(
    src: io.BufferedIOBase,
    size: int,
    out: BinaryIO,
    header: ObjectHeader,
    data_key: bytes,
    progress: Progress,
) -> None:
    """Write header and segments for exactly ``size`` bytes read from ``src``, zero-padded."""
    aead, aad, seg = _segment_aead(data_key, header), header.pack(), header.segment_size
    out.write(aad)
    plain = padded_len(size)
    n = segment_count(plain, seg)
    buf = bytearray(seg)
    for i in range(n):
        want = min(seg, plain - i * seg)
        data = max(0, min(want, size - i * seg))
        view = memoryview(buf)[:want]
        if data and src.readinto(view[:data]) != data:
            raise SealedFormatError("a source file changed size while it was being sealed")
        view[data:want] = bytes(want - data)
        out.write(aead.encrypt(_nonce(header.nonce_prefix, i, i == n - 1), view, aad))
        progress(data)
    if src.read(1):
        raise SealedFormatError("a source file grew while it was being sealed")


def decrypt_object(
    f: io.BufferedIOBase,
    header: ObjectHeader,
    data_key: bytes,
    size: int,
    sink: Callable[[memoryview], object] | memoryview,
    where: str,
    progress: Progress,
) -> None:
    """Authenticate and decrypt every segment; the first ``size`` plaintext bytes go to ``sink``.

    The caller has checked the file length.  ``sink`` is either a writable view
    of ``size`` bytes (segments are decrypted straight into it; on failure the
    caller must discard it) or a callable that receives each segment's view,
    reused for the next one: copy it or write it out before returning.
    """
    aead, aad, seg = _segment_aead(data_key, header), header.pack(), header.segment_size
    plain = padded_len(size)
    n = segment_count(plain, seg)
    cbuf, pbuf = bytearray(seg + TAG), bytearray(seg)
    out = sink if isinstance(sink, memoryview) else None
    f.seek(HEADER_LEN)
    for i in range(n):
        clen, start = min(seg, plain - i * seg) + TAG, i * seg
        data = max(0, min(clen - TAG, size - start))
        cview = memoryview(cbuf)[:clen]
        direct = out is not None and data == clen - TAG
        if f.readinto(cview) != clen:
            raise SealedIntegrityError(f"{where}: truncated at segment {i}")
        pview = out[start : start + data] if direct and out is not None else memoryview(pbuf)[: clen - TAG]
        try:
            aead.decrypt_into(_nonce(header.nonce_prefix, i, i == n - 1), cview, aad, pview)
        except InvalidTag:
            pview[:] = bytes(len(pview))  # never leave unauthenticated plaintext behind
            pview.release()  # the caller's buffer can then be closed
            raise SealedIntegrityError(
                f"{where}: segment {i} of {n} failed authentication (modified, reordered or truncated)"
            ) from None
        if out is not None:
            if not direct and data:
                out[start : start + data] = pview[:data]
            pview.release()
        elif data:
            sink(pview[:data])  # type: ignore[operator]
        progress(data)

import os
import shutil

import pytest

from modelgate.storage import seal_ops
from modelgate.storage.errors import SealedFormatError, SealedIntegrityError, WrongKey
from modelgate.storage.sealed import MANIFEST, OBJECTS, is_sealed, open_sealed
from modelgate.storage.stream import HEADER_LEN, PAD, SEGMENT_SIZE, TAG


def _plain(model_dir):
    return {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}


def test_round_trip_bytes_buffer_and_memfd(model_dir, sealed_dir, kek):
    plain = _plain(model_dir)
    assert is_sealed(sealed_dir) and not is_sealed(model_dir)
    with open_sealed(sealed_dir, kek) as m:
        assert m.names() == sorted(plain)
        for name, data in plain.items():
            assert m.size(name) == len(data)
            assert m.read(name) == data
            assert m.read_buffer(name) == data
            path = m.memfd_path(name)
            with open(path, "rb") as f:
                assert f.read() == data
        assert m.verify() == sum(map(len, plain.values()))


def test_memfd_is_sealed_against_writes(sealed_dir, kek):
    with open_sealed(sealed_dir, kek) as m:
        fd = m.open_memfd("config.json")
        try:
            with pytest.raises(PermissionError):
                os.write(fd, b"x")
        finally:
            os.close(fd)


def test_names_contents_and_exact_sizes_are_not_visible(model_dir, sealed_dir):
    blob = b"".join(p.read_bytes() for p in sealed_dir.rglob("*") if p.is_file())
    for needle in (
        b"HIDDEN-NAME-CANARY",
        b"TOKENIZER-CANARY",
        b"config.json",
        b"model.safetensors",
        b"tokenizer",
    ):
        assert needle not in blob
    names = {p.name for p in sealed_dir.rglob("*")}
    assert not names & {"config.json", "model.safetensors", "tokenizer.json", "sub", "empty.txt"}
    for obj in (sealed_dir / OBJECTS).iterdir():
        payload = obj.stat().st_size - HEADER_LEN
        segments = -(-payload // (SEGMENT_SIZE + TAG))
        assert (payload - segments * TAG) % PAD == 0  # lengths only say "a multiple of 64 KiB"


def test_wrong_key_is_told_apart(sealed_dir):
    with pytest.raises(WrongKey):
        open_sealed(sealed_dir, os.urandom(32))


def test_not_a_sealed_model(model_dir, kek):
    with pytest.raises(SealedFormatError):
        open_sealed(model_dir, kek)


def _objects(sealed_dir):
    return sorted((sealed_dir / OBJECTS).iterdir(), key=lambda p: p.stat().st_size)


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _open_and_read_all(sealed_dir, kek):
    with open_sealed(sealed_dir, kek) as m:
        for name in m.names():
            m.read(name)


def _big(sealed_dir):
    return _objects(sealed_dir)[-1]


# offsets into the big (4-segment) object: header fields, each segment's body and tag, the last byte
_SEG = SEGMENT_SIZE + TAG
_OFFSETS = {
    "magic": 0,
    "version": 7,
    "segment_size": 10,
    "model_uid": 14,
    "object_id": 30,
    "salt": 50,
    "nonce_prefix": 80,
    "segment0": HEADER_LEN + 5,
    "segment0_tag": HEADER_LEN + _SEG - 1,
    "segment1": HEADER_LEN + _SEG + 777,
    "segment2": HEADER_LEN + 2 * _SEG + 3,
    "last_segment": HEADER_LEN + 3 * _SEG + 1,
    "last_byte": -1,
}


@pytest.mark.parametrize("where", sorted(_OFFSETS))
def test_flipped_byte_in_any_part_of_an_object_is_detected(sealed_dir, kek, where):
    obj = _big(sealed_dir)
    off = _OFFSETS[where]
    _flip(obj, off if off >= 0 else obj.stat().st_size + off)
    with pytest.raises((SealedIntegrityError, SealedFormatError)):
        _open_and_read_all(sealed_dir, kek)


@pytest.mark.parametrize("offset", [0, 9, 20, 45, 60, 100, -1])
def test_flipped_byte_in_keys_file_is_detected(sealed_dir, kek, offset):
    keys = sealed_dir / "keys"
    _flip(keys, offset if offset >= 0 else keys.stat().st_size + offset)
    with pytest.raises((SealedIntegrityError, SealedFormatError, WrongKey)):
        _open_and_read_all(sealed_dir, kek)


@pytest.mark.parametrize("offset", [3, HEADER_LEN + 1, -1])
def test_flipped_byte_in_manifest_is_detected(sealed_dir, kek, offset):
    man = sealed_dir / MANIFEST
    _flip(man, offset if offset >= 0 else man.stat().st_size + offset)
    with pytest.raises((SealedIntegrityError, SealedFormatError)):
        open_sealed(sealed_dir, kek)


@pytest.mark.parametrize("cut", [1, TAG, _SEG, _SEG + 1])
def test_truncation_is_detected_before_decryption(sealed_dir, kek, cut):
    obj = _big(sealed_dir)
    data = obj.read_bytes()
    obj.write_bytes(data[:-cut])
    with pytest.raises(SealedIntegrityError, match="truncated or extended"):
        open_sealed(sealed_dir, kek)


def test_extension_is_detected(sealed_dir, kek):
    with _big(sealed_dir).open("ab") as f:
        f.write(b"\0" * (SEGMENT_SIZE + TAG))
    with pytest.raises(SealedIntegrityError):
        open_sealed(sealed_dir, kek)


def test_truncated_at_segment_boundary_with_last_flag_is_detected(sealed_dir, kek):
    """Dropping whole trailing segments fails even if the length check is bypassed: no last flag."""
    from modelgate.storage import stream

    obj = _big(sealed_dir)
    data = obj.read_bytes()
    header = stream.ObjectHeader.unpack(data[:HEADER_LEN], "t")
    with open_sealed(sealed_dir, kek) as m:
        _, dk = m._keys[header.object_id]
    obj.write_bytes(data[: HEADER_LEN + 2 * _SEG])
    with obj.open("rb") as fh, pytest.raises(SealedIntegrityError, match="segment 1 of 2"):
        stream.decrypt_object(fh, header, dk, 2 * SEGMENT_SIZE, lambda b: None, "t", lambda n: None)


def test_reordered_segments_are_detected(sealed_dir, kek):
    obj = _big(sealed_dir)
    data = obj.read_bytes()
    s0 = data[HEADER_LEN : HEADER_LEN + _SEG]
    s1 = data[HEADER_LEN + _SEG : HEADER_LEN + 2 * _SEG]
    obj.write_bytes(data[:HEADER_LEN] + s1 + s0 + data[HEADER_LEN + 2 * _SEG :])
    with pytest.raises(SealedIntegrityError, match="segment 0"):
        _open_and_read_all(sealed_dir, kek)


def test_swapped_object_files_are_detected(sealed_dir, kek):
    a, b = _objects(sealed_dir)[:2]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(SealedIntegrityError):
        open_sealed(sealed_dir, kek)


def test_object_from_another_model_under_the_same_key_is_detected(tmp_path, model_dir, sealed_dir, kek):
    other = tmp_path / "other"
    seal_ops.seal(model_dir, other, kek, show=False)
    victim = _big(sealed_dir)
    shutil.copyfile(_big(other), victim)
    with pytest.raises(SealedIntegrityError, match="another sealed model"):
        open_sealed(sealed_dir, kek)
    shutil.copyfile(other / MANIFEST, sealed_dir / MANIFEST)
    with pytest.raises(SealedIntegrityError):
        open_sealed(sealed_dir, kek)


def test_missing_object_is_detected(sealed_dir, kek):
    _objects(sealed_dir)[0].unlink()
    with pytest.raises(SealedIntegrityError, match="missing"):
        open_sealed(sealed_dir, kek)


def test_rekey_rewraps_without_touching_objects(sealed_dir, kek, model_dir, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in (sealed_dir / OBJECTS).iterdir()}
    before_manifest = (sealed_dir / MANIFEST).read_bytes()
    new = os.urandom(32)
    seal_ops.rekey(sealed_dir, kek, new)
    assert {p: p.stat().st_mtime_ns for p in (sealed_dir / OBJECTS).iterdir()} == before
    assert (sealed_dir / MANIFEST).read_bytes() == before_manifest
    with pytest.raises(WrongKey):
        open_sealed(sealed_dir, kek)
    seal_ops.unseal(sealed_dir, tmp_path / "out", new, show=False)
    assert _plain(tmp_path / "out") == _plain(model_dir)


def test_seal_refuses_existing_destination_and_leaves_nothing_on_failure(
    model_dir, sealed_dir, kek, tmp_path
):
    with pytest.raises(SealedFormatError, match="already exists"):
        seal_ops.seal(model_dir, sealed_dir, kek, show=False)
    with pytest.raises(SealedFormatError):
        seal_ops.seal(tmp_path / "no-such-dir", tmp_path / "x", kek, show=False)
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if ".sealing-" in p.name]


def test_unseal_with_wrong_key_writes_nothing(sealed_dir, tmp_path):
    with pytest.raises(WrongKey):
        seal_ops.unseal(sealed_dir, tmp_path / "out", os.urandom(32), show=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".unsealing-" in p.name]


def test_tampered_weights_unseal_leaves_no_partial_plaintext(sealed_dir, kek, tmp_path):
    obj = _big(sealed_dir)
    _flip(obj, obj.stat().st_size - 5)
    with pytest.raises(SealedIntegrityError):
        seal_ops.unseal(sealed_dir, tmp_path / "out", kek, show=False)
    assert not (tmp_path / "out").exists()


def test_tampered_object_fails_every_read_path(sealed_dir, kek):
    obj = _big(sealed_dir)
    _flip(obj, HEADER_LEN + _SEG + 10)  # segment 1
    with open_sealed(sealed_dir, kek) as m:
        before = len(os.listdir("/proc/self/fd"))
        for read in (m.read, m.read_buffer, m.open_memfd, m.memfd_path):
            with pytest.raises(SealedIntegrityError, match="segment 1 of 4"):
                read("model.safetensors")
        assert len(os.listdir("/proc/self/fd")) == before  # no memfd left open
        with pytest.raises(SealedIntegrityError):
            m.verify()

"""Real cryptsetup on volume files in tmp (no device-mapper needed for these)."""

import os
import shutil
import threading
from pathlib import Path

import pytest

from modelgate.storage.errors import LuksBadKey, LuksNoDevice, LuksNotLuks, NoDeviceMapper
from modelgate.storage.luks import FAST_PBKDF, Cryptsetup, device_mapper_problem

pytestmark = pytest.mark.skipif(
    shutil.which("cryptsetup") is None, reason="cryptsetup not installed (cryptsetup-bin)"
)


@pytest.fixture
def cs():
    return Cryptsetup(timeout_s=60)


@pytest.fixture
def volume(tmp_path, cs):
    key = os.urandom(64)
    dev = tmp_path / "vol.img"
    with dev.open("wb") as f:
        f.truncate(32 << 20)
    cs.format(str(dev), key, extra=FAST_PBKDF)
    return str(dev), key


def test_format_is_luks_and_json_dump(volume, cs, tmp_path):
    dev, _ = volume
    assert cs.is_luks(dev)
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"\0" * (1 << 20))
    assert not cs.is_luks(str(plain))
    with pytest.raises(LuksNoDevice):
        cs.is_luks(str(tmp_path / "missing.img"))
    meta = cs.dump(dev)
    slot = meta["keyslots"]["0"]
    assert slot["type"] == "luks2"
    assert slot["kdf"]["type"] == "pbkdf2" and slot["kdf"]["iterations"] == 1000
    assert meta["segments"]["0"]["encryption"] == "aes-xts-plain64"
    with pytest.raises(LuksNotLuks):
        cs.dump(str(plain))


def test_test_passphrase_right_and_wrong(volume, cs):
    dev, key = volume
    cs.test_key(dev, key)
    with pytest.raises(LuksBadKey) as info:
        cs.test_key(dev, os.urandom(64))
    assert info.value.code == "luks_bad_key"


def test_detached_header(tmp_path, cs):
    key = os.urandom(64)
    data, header = tmp_path / "data.img", tmp_path / "header.img"
    with data.open("wb") as f:
        f.truncate(16 << 20)
    cs.format(str(data), key, header=str(header), extra=FAST_PBKDF)
    assert not cs.is_luks(str(data))  # the data device carries no header
    assert cs.is_luks(str(data), header=str(header))
    cs.test_key(str(data), key, header=str(header))
    with pytest.raises(LuksBadKey):
        cs.test_key(str(data), os.urandom(64), header=str(header))
    assert cs.dump(str(data), header=str(header))["keyslots"]["0"]["kdf"]["type"] == "pbkdf2"


def test_key_rotation_add_then_kill_old_slot(volume, cs):
    dev, old = volume
    new = os.urandom(64)
    cs.add_key(dev, old, new, extra=FAST_PBKDF)
    assert set(cs.dump(dev)["keyslots"]) == {"0", "1"}
    cs.test_key(dev, new)
    cs.kill_slot(dev, 0, new)
    assert set(cs.dump(dev)["keyslots"]) == {"1"}
    with pytest.raises(LuksBadKey):
        cs.test_key(dev, old)
    cs.test_key(dev, new)


def test_key_never_in_any_process_cmdline(tmp_path, cs):
    """A slow keyslot keeps cryptsetup alive long enough to scan /proc/*/cmdline while it runs."""
    key = os.urandom(32).hex().encode()  # printable, so a leak would be findable as text
    dev = tmp_path / "slow.img"
    with dev.open("wb") as f:
        f.truncate(32 << 20)
    cs.format(str(dev), key, extra=("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1500000"))
    seen, hits, done = set(), [], threading.Event()

    def scan():
        while not done.is_set():
            for p in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    cmd = p.read_bytes()
                except OSError:
                    continue
                if b"cryptsetup" in cmd:
                    seen.add(cmd)
                if key in cmd or key[:16] in cmd:
                    hits.append(cmd)

    t = threading.Thread(target=scan)
    t.start()
    try:
        for _ in range(2):
            cs.test_key(str(dev), key)
    finally:
        done.set()
        t.join()
    assert seen, "the scan never saw cryptsetup running"
    assert hits == []


@pytest.mark.skipif(
    device_mapper_problem() is None, reason="device-mapper exists here; the VM test covers open"
)
def test_open_without_device_mapper_names_the_reason(volume, cs):
    dev, key = volume
    with pytest.raises(NoDeviceMapper, match="device-mapper"):
        cs.open(dev, "modelgate-test-nodm", key)


@pytest.mark.skipif(
    device_mapper_problem() is None, reason="device-mapper exists here; the VM test covers open"
)
async def test_manager_on_a_host_without_device_mapper_fails_at_start(volume, tmp_path):
    from modelgate.config import build_config
    from modelgate.storage.manager import StorageManager

    dev, key = volume
    kf = tmp_path / "k"
    kf.write_bytes(key)
    kf.chmod(0o400)
    storage = {"kind": "luks", "device": dev, "key_file": str(kf), "mount": str(tmp_path / "mnt")}
    model = {"id": "m", "backend": "tgi", "endpoints": [{"url": "http://127.0.0.1:9"}], "storage": storage}
    mgr = StorageManager(build_config({"models": [model]}, source="t", environ={}))
    failed = await mgr.open_all()
    assert failed["m"]["state"] == "failed" and "device-mapper" in failed["m"]["detail"]
    assert not mgr.ready("m")
    await mgr.close_all()  # nothing was opened: nothing to close, no error
    assert mgr.status()["m"]["state"] == "failed"


async def test_manager_probe_with_real_cryptsetup(volume, tmp_path):
    from modelgate.config import build_config
    from modelgate.storage.manager import StorageManager

    dev, key = volume

    def manager(secret: bytes) -> StorageManager:
        kf = tmp_path / f"k-{secret[:4].hex()}"
        kf.write_bytes(secret)
        kf.chmod(0o400)
        storage = {"kind": "luks", "device": dev, "key_file": str(kf), "mount": str(tmp_path / "mnt")}
        model = {
            "id": "m",
            "backend": "tgi",
            "endpoints": [{"url": "http://127.0.0.1:9"}],
            "storage": storage,
        }
        return StorageManager(build_config({"models": [model]}, source="t", environ={}))

    good = (await manager(key).probe_all())["m"]
    if device_mapper_problem() is None:
        assert good["state"] == "verified"
    else:  # the key is right, and the probe says what will stop the open
        assert good["state"] == "failed" and good["detail"].startswith("NoDeviceMapper: key opens")
    bad = (await manager(os.urandom(64)).probe_all())["m"]
    assert bad["state"] == "failed" and bad["detail"].startswith("LuksBadKey")

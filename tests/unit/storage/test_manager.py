"""StorageManager at its seams: cryptsetup/mount shims that record argv and stdin."""

import json
import os
import stat
import sys

import pytest

from modelgate.config import build_config
from modelgate.storage import seal_ops
from modelgate.storage.errors import (
    LuksBadKey,
    LuksBusy,
    LuksNoDevice,
    LuksNotLuks,
    LuksOutOfMemory,
    NoDeviceMapper,
)
from modelgate.storage.luks import Cryptsetup, classify
from modelgate.storage.manager import StorageManager

SHIM = """#!{python}
import json, os, sys
log = {log!r}
rc = int(os.environ.get("SHIM_RC_" + os.path.basename(sys.argv[0]).upper() + "_" + (sys.argv[1] if len(sys.argv) > 1 else ""), "0"))
stdin = sys.stdin.buffer.read().hex() if not sys.stdin.isatty() else ""
with open(log, "a") as f:
    f.write(json.dumps({{"argv": sys.argv, "stdin": stdin}}) + "\\n")
if rc:
    sys.stderr.write(os.environ.get("SHIM_ERR", "failed") + "\\n")
sys.exit(rc)
"""


@pytest.fixture
def shims(tmp_path):
    log = tmp_path / "calls.jsonl"
    bins = {}
    for name in ("cryptsetup", "mount", "umount"):
        p = tmp_path / name
        p.write_text(SHIM.format(python=sys.executable, log=str(log)))
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
        bins[name] = str(p)
    control = tmp_path / "control"
    control.write_bytes(b"")

    def make(env=None):
        cs = Cryptsetup(bins["cryptsetup"], bins["mount"], bins["umount"], env={**os.environ, **(env or {})})
        return cs, str(control)

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return make, calls


def _config(tmp_path, key: bytes, **storage):
    kf = tmp_path / "vol.key"
    kf.write_bytes(key)
    kf.chmod(0o400)
    spec = {
        "kind": "luks",
        "device": str(tmp_path / "vol.img"),
        "key_file": str(kf),
        "mount": str(tmp_path / "mnt"),
    }
    spec.update(storage)
    raw = {
        "models": [
            {"id": "llama", "backend": "tgi", "endpoints": [{"url": "http://127.0.0.1:9"}], "storage": spec}
        ]
    }
    return build_config(raw, source="test", environ={})


async def test_open_mount_then_last_release_closes(tmp_path, shims):
    make, calls = shims
    key = os.urandom(64)
    cs, control = make()
    mgr = StorageManager(_config(tmp_path, key), cryptsetup=cs, dm_control=control)
    assert await mgr.open_all() == {}
    st = mgr.status()["llama"]
    assert st["kind"] == "luks" and st["state"] == "mounted" and mgr.ready("llama")
    assert mgr.mount_path("llama") == tmp_path / "mnt"
    log = calls()
    assert [c["argv"][1] for c in log] == ["isLuks", "open", "-o"]
    open_call = log[1]
    assert "--readonly" in open_call["argv"] and open_call["argv"][-1] == "modelgate-llama"
    assert open_call["argv"][open_call["argv"].index("--key-file") + 1] == "-"
    assert open_call["stdin"] == key.hex()  # the key went through stdin ...
    assert all(key.hex() not in json.dumps(c["argv"]) for c in log)  # ... and never argv
    assert log[2]["argv"][2].startswith("ro,")

    await mgr.acquire("llama")
    await mgr.acquire("llama")
    await mgr.release("llama")
    assert mgr.status()["llama"]["state"] == "mounted"
    await mgr.release("llama")
    assert mgr.status()["llama"]["state"] == "closed"
    assert [os.path.basename(c["argv"][0]) for c in calls()[-2:]] == ["umount", "cryptsetup"]
    assert calls()[-1]["argv"][1:] == ["close", "modelgate-llama"]


async def test_detached_header_and_custom_name_reach_cryptsetup(tmp_path, shims):
    make, calls = shims
    cs, control = make()
    hdr = str(tmp_path / "hdr.img")
    mgr = StorageManager(
        _config(tmp_path, b"k" * 64, header=hdr, name="weights"), cryptsetup=cs, dm_control=control
    )
    await mgr.open_all()
    is_luks, opened = calls()[0]["argv"], calls()[1]["argv"]
    assert is_luks[-1] == hdr
    assert opened[opened.index("--header") + 1] == hdr and opened[-1] == "weights"
    await mgr.close_all()
    assert calls()[-1]["argv"][1:] == ["close", "weights"]


async def test_no_device_mapper_fails_at_start_with_the_reason(tmp_path, shims):
    make, calls = shims
    cs, _ = make()
    mgr = StorageManager(_config(tmp_path, b"k" * 64), cryptsetup=cs, dm_control=str(tmp_path / "absent"))
    failed = await mgr.open_all()
    assert failed["llama"]["state"] == "failed"
    assert "NoDeviceMapper" in failed["llama"]["detail"] and "device-mapper" in failed["llama"]["detail"]
    assert not mgr.ready("llama")
    assert calls() == []  # nothing was attempted


@pytest.mark.parametrize(
    ("rc", "err", "cls"),
    [(2, "No key available with this passphrase.", "LuksBadKey"), (5, "Device busy", "LuksBusy")],
)
async def test_cryptsetup_failures_become_failed_states(tmp_path, shims, rc, err, cls):
    make, calls = shims
    cs, control = make({"SHIM_RC_CRYPTSETUP_open": str(rc), "SHIM_ERR": err})
    mgr = StorageManager(_config(tmp_path, b"k" * 64), cryptsetup=cs, dm_control=control)
    failed = await mgr.open_all()
    assert failed["llama"]["detail"].startswith(cls)
    assert "mount" not in [os.path.basename(c["argv"][0]) for c in calls()]


async def test_mount_failure_closes_the_mapping(tmp_path, shims):
    make, calls = shims
    cs, control = make({"SHIM_RC_MOUNT_-o": "32", "SHIM_ERR": "wrong fs type"})
    mgr = StorageManager(_config(tmp_path, b"k" * 64), cryptsetup=cs, dm_control=control)
    failed = await mgr.open_all()
    assert "MountError" in failed["llama"]["detail"]
    assert calls()[-1]["argv"][1:] == ["close", "modelgate-llama"]


async def test_unreadable_key_file_fails_without_running_cryptsetup(tmp_path, shims):
    make, calls = shims
    cs, control = make()
    cfg = _config(tmp_path, b"k" * 64)
    (tmp_path / "vol.key").chmod(0o644)
    mgr = StorageManager(cfg, cryptsetup=cs, dm_control=control)
    failed = await mgr.open_all()
    assert "KeyUnavailable" in failed["llama"]["detail"] and "group or others" in failed["llama"]["detail"]
    assert calls() == []


async def test_sealed_local_model_is_verified_or_failed(tmp_path, model_dir, kek):
    sealed = tmp_path / "sealed"
    seal_ops.seal(model_dir, sealed, kek, show=False)
    raw = {"models": [{"id": "m", "backend": "local", "path": str(sealed), "key_env": "MKEY"}]}
    mgr = StorageManager(build_config(raw, source="t", environ={"MKEY": kek.hex()}))
    assert await mgr.open_all() == {}
    assert mgr.status() == {
        "m": {"kind": "sealed", "state": "verified", "detail": mgr.status()["m"]["detail"]}
    }
    bad = StorageManager(build_config(raw, source="t", environ={"MKEY": os.urandom(32).hex()}))
    failed = await bad.open_all()
    assert failed["m"]["detail"].startswith("WrongKey") and not bad.ready("m")


@pytest.mark.parametrize(
    ("rc", "stderr", "cls"),
    [
        (2, "No key available with this passphrase.", LuksBadKey),
        (3, "Not enough available memory to open a keyslot.", LuksOutOfMemory),
        (4, "Device /x does not exist or access denied.", LuksNoDevice),
        (5, "Device mg is busy.", LuksBusy),
        (1, "Device /x is not a valid LUKS device.", LuksNotLuks),
        (1, "Cannot initialize device-mapper. Is dm_mod kernel module loaded?", NoDeviceMapper),
    ],
)
def test_exit_codes_map_to_distinct_errors(rc, stderr, cls):
    err = classify(rc, stderr, "open /x")
    assert type(err) is cls
    assert err.status == 503


async def test_probe_checks_without_opening(tmp_path, shims):
    make, calls = shims
    cs, control = make()
    mgr = StorageManager(_config(tmp_path, b"k" * 64), cryptsetup=cs, dm_control=control)
    assert (await mgr.probe_all())["llama"]["state"] == "verified"
    assert [c["argv"][1:3] for c in calls()] == [
        ["isLuks", str(tmp_path / "vol.img")],
        ["open", "--test-passphrase"],
    ]
    assert calls()[1]["stdin"] == (b"k" * 64).hex()
    assert mgr.status()["llama"]["state"] == "pending"  # nothing was opened
    nodm = StorageManager(_config(tmp_path, b"k" * 64), cryptsetup=cs, dm_control=str(tmp_path / "none"))
    probe = (await nodm.probe_all())["llama"]
    assert probe["state"] == "failed" and "NoDeviceMapper" in probe["detail"]
    bad, _ = make({"SHIM_RC_CRYPTSETUP_open": "2", "SHIM_ERR": "No key available with this passphrase."})
    probe = await StorageManager(_config(tmp_path, b"k" * 64), cryptsetup=bad, dm_control=control).probe_all()
    assert probe["llama"]["detail"].startswith("LuksBadKey")

"""The real open -> mount -> read -> close path of a LUKS volume, in a throwaway qemu VM.

The host here has no device-mapper, so the VM (scripts/luks-vm-setup, -run) runs the
exact cryptsetup/mount argv that ``modelgate.storage.luks`` builds, against volumes
made on the host; its results are mapped with the same ``classify`` as on a host.
"""

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from modelgate.storage.errors import LuksBadKey, LuksBusy
from modelgate.storage.luks import FAST_PBKDF, close_argv, mount_argv, open_argv
from modelgate.storage.luks import classify as classify_error

pytestmark = pytest.mark.vm
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
_NEEDS = ("qemu-system-x86_64", "cryptsetup", "mkfs.ext4", "busybox")


@pytest.fixture(scope="module")
def vm_dir(tmp_path_factory):
    missing = [t for t in _NEEDS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"LUKS VM needs {', '.join(missing)}")
    out = tmp_path_factory.mktemp("luks-vm")
    proc = subprocess.run([SCRIPTS / "luks-vm-setup", out], capture_output=True, text=True, timeout=120)
    if proc.returncode == 3:
        pytest.skip(f"LUKS VM cannot be built here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return out


def _sh(*argv: str) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _volumes(tmp: Path, key: bytes) -> tuple[str, list[Path]]:
    """An ext4 LUKS2 volume and a detached-header one, filled on the host (no device-mapper)."""
    payload = tmp / "payload"
    payload.mkdir()
    data = os.urandom(1 << 20)
    (payload / "model.bin").write_bytes(data)
    kf = tmp / "key"
    kf.write_bytes(key)
    kf.chmod(0o400)
    vol, det, hdr = tmp / "vol.img", tmp / "det.img", tmp / "det.hdr"
    for img in (vol, det):
        with img.open("wb") as f:
            f.truncate(48 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-d", str(payload), str(img), "16M"], check=True)
    enc = [
        "cryptsetup",
        "reencrypt",
        "--encrypt",
        "--type",
        "luks2",
        "--batch-mode",
        "--key-file",
        str(kf),
        *FAST_PBKDF,
    ]
    subprocess.run([*enc, "--reduce-device-size", "32M", str(vol)], check=True, timeout=60)
    subprocess.run([*enc, "--header", str(hdr), str(det)], check=True, timeout=60)
    keydisk = tmp / "key.img"
    keydisk.write_bytes(key.ljust(4096, b"\0"))
    return hashlib.sha256(data).hexdigest(), [vol, keydisk, det, hdr]


def _scenario(key_len: int) -> str:
    """vdb: volume, vdc: key disk, vdd: detached-header data, vde: its header."""
    cs = lambda *a: _sh("cryptsetup", *a)  # noqa: E731
    return "\n".join(
        [
            "run() { s=$1; shift; \"$@\" 2>/run/err; echo \"STEP $s rc=$? err=$(tr '\\n' ' ' </run/err)\"; }",
            f"head -c {key_len} /dev/vdc > /run/key; head -c {key_len} /dev/urandom > /run/bad",
            f"run wrongkey {cs(*open_argv('/dev/vdb', 'mg', key_file='/run/bad'))}",
            "echo \"STEP after_wrongkey $(ls /dev/mapper | tr '\\n' ' ')\"",
            f"run open {cs(*open_argv('/dev/vdb', 'mg', key_file='/run/key'))}",
            f"run busy {cs(*open_argv('/dev/vdb', 'mg', key_file='/run/key'))}",
            "mkdir -p /mnt/a /mnt/b",
            f"run mount {_sh('mount', *mount_argv('/dev/mapper/mg', '/mnt/a'))}",
            'echo "STEP sha $(sha256sum /mnt/a/model.bin | cut -d" " -f1)"',
            "run write sh -c 'echo x > /mnt/a/new'",
            "run umount umount /mnt/a",
            f"run close {cs(*close_argv('mg'))}",
            f"run hopen {cs(*open_argv('/dev/vdd', 'mgh', header='/dev/vde', key_file='/run/key'))}",
            f"run hmount {_sh('mount', *mount_argv('/dev/mapper/mgh', '/mnt/b'))}",
            'echo "STEP hsha $(sha256sum /mnt/b/model.bin | cut -d" " -f1)"',
            "run humount umount /mnt/b",
            f"run hclose {cs(*close_argv('mgh'))}",
            "echo \"STEP left $(ls /dev/mapper | tr '\\n' ' ')\"",
            "",
        ]
    )


def test_open_mount_read_close_in_a_vm(vm_dir, tmp_path):
    key = os.urandom(64)
    digest, disks = _volumes(tmp_path, key)
    scenario = tmp_path / "scenario.sh"
    scenario.write_text(_scenario(len(key)))
    proc = subprocess.run(
        [SCRIPTS / "luks-vm-run", vm_dir, scenario, *disks],
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, "LUKS_VM_TIMEOUT": "80"},
    )
    out = proc.stdout
    assert "VM DONE" in out, f"rc={proc.returncode}\n{out[-3000:]}\n{proc.stderr[-2000:]}"
    steps = {m.group(1): m.group(2) for m in re.finditer(r"^STEP (\w+) (.*)$", out, re.M)}

    def rc(step):
        return int(re.match(r"rc=(\d+)", steps[step]).group(1))

    def err(step):
        return steps[step].split("err=", 1)[1]

    # a wrong key is refused, mapped to LuksBadKey, and leaves no mapping behind
    assert rc("wrongkey") == 2 and type(classify_error(2, err("wrongkey"), "open")) is LuksBadKey
    assert steps["after_wrongkey"].split() == ["control"]
    # the right key opens read-only; a second open of the same name is busy
    assert rc("open") == 0
    assert type(classify_error(rc("busy"), err("busy"), "open")) is LuksBusy
    assert rc("mount") == 0 and steps["sha"] == digest
    assert rc("write") != 0  # mounted read-only
    assert rc("umount") == 0 and rc("close") == 0
    # detached header: the data disk has no header of its own
    assert rc("hopen") == 0 and rc("hmount") == 0 and steps["hsha"] == digest
    assert rc("humount") == 0 and rc("hclose") == 0
    assert steps["left"].split() == ["control"]  # no leftover mapping

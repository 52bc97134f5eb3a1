"""A thin wrapper over ``cryptsetup`` (and mount/umount) for LUKS model volumes.

Keys reach cryptsetup through stdin (``--key-file -``), a key file path, or an
inherited pipe (``/dev/fd/N``), never through argv or the environment.  Exit
codes and the few messages that matter are mapped to distinct errors:

==========  =========================================================
exit 2      ``LuksBadKey`` (no keyslot opens with this key)
exit 3      ``LuksOutOfMemory`` (PBKDF memory cost too high here)
exit 4      ``LuksNoDevice`` (no such device / header, access denied)
exit 5      ``LuksBusy`` (device or mapping in use)
message     ``NoDeviceMapper`` ("Cannot initialize device-mapper")
message     ``LuksNotLuks`` ("is not a valid LUKS device")
==========  =========================================================

Every call blocks; callers cross into a thread once (``asyncio.to_thread``).
The argv builders are pure so a test (or the qemu harness) can run exactly the
commands this module would run.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelgate.storage.errors import (
    LuksBadKey,
    LuksBusy,
    LuksError,
    LuksNoDevice,
    LuksNotLuks,
    LuksOutOfMemory,
    MountError,
    NoDeviceMapper,
)

FAST_PBKDF = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")  # tests only: keys are random
DM_CONTROL = "/dev/mapper/control"
MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"
_BY_CODE: dict[int, type[LuksError]] = {2: LuksBadKey, 3: LuksOutOfMemory, 4: LuksNoDevice, 5: LuksBusy}


def classify(returncode: int, stderr: str, what: str) -> LuksError:
    """The error for a failed cryptsetup run (stderr never holds the key)."""
    detail = " ".join(stderr.split())[-300:] or f"exit status {returncode}"
    if "Cannot initialize device-mapper" in stderr:
        return NoDeviceMapper(f"{what}: the kernel has no usable device-mapper ({detail})")
    if "not a valid LUKS device" in stderr:
        return LuksNotLuks(f"{what}: not a LUKS volume ({detail})")
    cls = _BY_CODE.get(returncode, LuksError)
    return cls(f"{what}: cryptsetup failed ({detail})")


def device_mapper_problem(control: str = DM_CONTROL) -> str | None:
    """Why device-mapper cannot be used here, or None when it can (opens the control node)."""
    try:
        fd = os.open(control, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{control} does not exist (no dm_mod in this kernel, or /dev not populated)"
    except OSError as exc:
        return f"{control} cannot be opened: {exc.strerror}"
    os.close(fd)
    return None


def _header(header: str | None) -> list[str]:
    return ["--header", header] if header else []


def format_argv(device: str, header: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    return [
        "luksFormat",
        "--type",
        "luks2",
        "--batch-mode",
        *extra,
        *_header(header),
        "--key-file",
        "-",
        device,
    ]


def test_key_argv(device: str, header: str | None = None) -> list[str]:
    return ["open", "--test-passphrase", *_header(header), "--key-file", "-", device]


def open_argv(device: str, name: str, header: str | None = None, key_file: str = "-") -> list[str]:
    return ["open", "--type", "luks", "--readonly", *_header(header), "--key-file", key_file, device, name]


def close_argv(name: str) -> list[str]:
    return ["close", name]


def mount_argv(source: str, target: str) -> list[str]:
    """Arguments to ``mount``: read-only, no devices, no set-uid, no exec."""
    return ["-o", MOUNT_OPTIONS, source, target]


@dataclass(frozen=True)
class Cryptsetup:
    """Runs cryptsetup and mount; the binaries are settable so tests can put shims in their place."""

    binary: str = "cryptsetup"
    mount_binary: str = "mount"
    umount_binary: str = "umount"
    timeout_s: float = 120.0
    env: dict[str, str] | None = field(default=None)

    def run(
        self, argv: Sequence[str], what: str, key: bytes | None = None, pass_fds: Sequence[int] = ()
    ) -> str:
        """Run ``cryptsetup argv`` with ``key`` on stdin; stdout on success, a mapped error otherwise."""
        try:
            proc = subprocess.run(
                [self.binary, *argv],
                input=key if key is not None else b"",
                capture_output=True,
                timeout=self.timeout_s,
                pass_fds=tuple(pass_fds),
                env=self.env,
                check=False,
            )
        except FileNotFoundError:
            raise LuksError(f"{what}: {self.binary} is not installed (apt install cryptsetup-bin)") from None
        except subprocess.TimeoutExpired:
            raise LuksError(f"{what}: cryptsetup did not finish within {self.timeout_s:g} s") from None
        if proc.returncode != 0:
            raise classify(proc.returncode, proc.stderr.decode("utf-8", "replace"), what)
        return proc.stdout.decode("utf-8", "replace")

    # -- no device-mapper needed --------------------------------------------------------

    def format(self, device: str, key: bytes, header: str | None = None, extra: Sequence[str] = ()) -> None:
        self.run(format_argv(device, header, extra), f"luksFormat {device}", key)

    def is_luks(self, device: str, header: str | None = None) -> bool:
        """Whether ``device`` (or its detached ``header``) is LUKS; missing device -> LuksNoDevice."""
        argv = ["isLuks", header or device]
        try:
            self.run(argv, f"isLuks {header or device}")
        except LuksNoDevice:
            raise
        except LuksError as exc:
            if type(exc) is LuksError:  # exit 1: readable, but not LUKS
                return False
            raise
        return True

    def dump(self, device: str, header: str | None = None) -> dict[str, Any]:
        out = self.run(["luksDump", "--dump-json-metadata", *_header(header), device], f"luksDump {device}")
        try:
            doc: dict[str, Any] = json.loads(out)
        except ValueError as exc:
            raise LuksError(f"luksDump {device}: output is not JSON") from exc
        return doc

    def test_key(self, device: str, key: bytes, header: str | None = None) -> None:
        """Raise ``LuksBadKey`` unless ``key`` opens a keyslot (no device-mapper needed)."""
        self.run(test_key_argv(device, header), f"test key for {device}", key)

    def add_key(
        self, device: str, key: bytes, new_key: bytes, header: str | None = None, extra: Sequence[str] = ()
    ) -> None:
        """Add ``new_key`` in a free keyslot; the new key travels through a pipe, not argv."""
        r, w = os.pipe()
        try:
            os.write(w, new_key)
            os.close(w)
            w = -1
            argv = [
                "luksAddKey",
                "--batch-mode",
                *extra,
                *_header(header),
                "--key-file",
                "-",
                device,
                f"/dev/fd/{r}",
            ]
            self.run(argv, f"luksAddKey {device}", key, pass_fds=(r,))
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    def kill_slot(self, device: str, slot: int, key: bytes, header: str | None = None) -> None:
        argv = ["luksKillSlot", "--batch-mode", *_header(header), "--key-file", "-", device, str(slot)]
        self.run(argv, f"luksKillSlot {device} {slot}", key)

    # -- device-mapper ------------------------------------------------------------------

    def open(self, device: str, name: str, key: bytes, header: str | None = None) -> str:
        """Open read-only as /dev/mapper/NAME; returns that path."""
        self.run(open_argv(device, name, header), f"open {device}", key)
        return f"/dev/mapper/{name}"

    def close(self, name: str) -> None:
        self.run(close_argv(name), f"close {name}")

    def mount(self, source: str, target: str) -> None:
        Path(target).mkdir(parents=True, exist_ok=True)
        self._mount_tool(
            [self.mount_binary, "-o", "ro,nosuid,nodev,noexec", source, target], f"mount {target}"
        )

    def umount(self, target: str) -> None:
        self._mount_tool([self.umount_binary, target], f"umount {target}")

    def _mount_tool(self, argv: list[str], what: str) -> None:
        try:
            proc = subprocess.run(
                argv, capture_output=True, timeout=self.timeout_s, env=self.env, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MountError(f"{what}: {exc}") from exc
        if proc.returncode != 0:
            detail = " ".join(proc.stderr.decode("utf-8", "replace").split())[-300:]
            raise MountError(f"{what}: failed with status {proc.returncode} ({detail})")

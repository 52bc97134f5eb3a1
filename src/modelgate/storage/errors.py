"""Storage errors: every one a subclass of ``errors.StorageError`` (HTTP 503).

Sealed models and LUKS volumes each fail in a few distinct ways that an operator
must tell apart (a wrong key is not a tampered file; a busy device is not a
missing kernel feature), so each way has its class and its ``code``.
"""

from __future__ import annotations

from modelgate.errors import StorageError


class KeyUnavailable(StorageError):
    """No key could be loaded: missing, unreadable, too open, malformed, command failed."""

    default_code = "storage_key_unavailable"
    permanent = True


class WrongKey(StorageError):
    """The key is well-formed but is not the key of this sealed model or volume."""

    default_code = "storage_wrong_key"
    permanent = True


class SealedFormatError(StorageError):
    """Not a sealed model, or a version this code cannot read."""

    default_code = "sealed_format_error"
    permanent = True


class SealedIntegrityError(StorageError):
    """A sealed model was modified: flipped bytes, truncation, reordering, swapped files."""

    default_code = "sealed_integrity_error"
    permanent = True


class LuksError(StorageError):
    """cryptsetup failed for a reason without its own class."""

    default_code = "luks_error"


class LuksBadKey(LuksError, WrongKey):
    """cryptsetup exit code 2: no keyslot opens with this key."""

    default_code = "luks_bad_key"


class LuksOutOfMemory(LuksError):
    """cryptsetup exit code 3: not enough memory to open a keyslot (PBKDF cost)."""

    default_code = "luks_out_of_memory"


class LuksNoDevice(LuksError):
    """cryptsetup exit code 4: wrong device, or no such device or header."""

    default_code = "luks_no_device"


class LuksBusy(LuksError):
    """cryptsetup exit code 5: the device or mapping is in use."""

    default_code = "luks_busy"


class LuksNotLuks(LuksError):
    """The device (or detached header) is not a LUKS volume."""

    default_code = "luks_not_luks"


class NoDeviceMapper(LuksError):
    """The kernel has no usable device-mapper, so no volume can be opened here."""

    default_code = "luks_no_device_mapper"


class MountError(LuksError):
    """mount or umount of an opened volume failed."""

    default_code = "luks_mount_error"

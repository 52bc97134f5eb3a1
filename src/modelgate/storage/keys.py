"""Key providers: a key file, an environment value (resolved by the config), or a command.

A sealed model's key-encryption key (KEK) is 32 bytes, given raw or as 64 hex
characters.  A LUKS key is any byte string (``load_secret``).  Keys never appear
in argv, logs or error messages, and core dumps are disabled for the rest of the
process's life as soon as one is loaded (``RLIMIT_CORE`` set to 0, hard limit too).
"""

from __future__ import annotations

import os
import resource
import secrets
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

from modelgate.storage.errors import KeyUnavailable

KEY_BYTES = 32
COMMAND_TIMEOUT_S = 30.0
_MAX_SECRET = 64 * 1024


def disable_core_dumps() -> None:
    """Make this process unable to write a core dump (which would hold the key)."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError) as exc:  # pragma: no cover - setrlimit to 0 is always allowed
        raise KeyUnavailable(f"cannot disable core dumps before loading a key: {exc}") from exc


def check_key_file(path: str | os.PathLike[str]) -> Path:
    """The key file as a Path; refused when missing, not a regular file or open to group/others."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise KeyUnavailable(f"key file {p} does not exist") from None
    except OSError as exc:
        raise KeyUnavailable(f"key file {p} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyUnavailable(f"key file {p} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyUnavailable(
            f"key file {p} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 400 {p}"
        )
    return p


def _read_key_file(path: str | os.PathLike[str]) -> bytes:
    p = check_key_file(path)
    try:
        with p.open("rb") as f:
            data = f.read(_MAX_SECRET + 1)
    except OSError as exc:
        raise KeyUnavailable(f"key file {p} cannot be read: {exc.strerror}") from None
    if len(data) > _MAX_SECRET:
        raise KeyUnavailable(f"key file {p} is too large to be a key")
    return data


def _run_key_command(command: Sequence[str]) -> bytes:
    if not command:
        raise KeyUnavailable("key_command is empty")
    try:
        proc = subprocess.run(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise KeyUnavailable(f"key command {command[0]!r} not found") from None
    except subprocess.TimeoutExpired:
        raise KeyUnavailable(f"key command {command[0]!r} timed out after {COMMAND_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise KeyUnavailable(f"key command {command[0]!r} cannot run: {exc.strerror}") from None
    if proc.returncode != 0:
        raise KeyUnavailable(f"key command {command[0]!r} exited with status {proc.returncode}")
    return proc.stdout


def _strip_newline(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data


def load_secret(
    key_file: str | os.PathLike[str] | None = None,
    key_env_value: str | None = None,
    key_command: Sequence[str] | None = None,
) -> bytes:
    """The raw secret from exactly one provider (a LUKS passphrase, or a KEK before parsing).

    A key file is returned byte for byte; an environment value or a command's
    stdout loses one trailing newline.
    """
    given = [x is not None for x in (key_file, key_env_value, key_command)]
    if sum(given) != 1:
        raise KeyUnavailable("give exactly one key source: key_file, key_env or key_command")
    disable_core_dumps()
    if key_file is not None:
        data = _read_key_file(key_file)
    elif key_env_value is not None:
        data = _strip_newline(key_env_value.encode("utf-8"))
    else:
        assert key_command is not None
        data = _strip_newline(_run_key_command(key_command))
    if not data:
        raise KeyUnavailable("the key is empty")
    return data


def parse_key(data: bytes) -> bytes:
    """32 raw bytes, or 64 hex characters (surrounding whitespace ignored) -> 32 bytes."""
    if len(data) == KEY_BYTES:
        return bytes(data)
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise KeyUnavailable(
        f"a key must be {KEY_BYTES} raw bytes or {2 * KEY_BYTES} hex characters (got {len(data)} bytes)"
    )


def load_key(
    key_file: str | os.PathLike[str] | None = None,
    key_env_value: str | None = None,
    key_command: Sequence[str] | None = None,
) -> bytes:
    """A sealed model's 32-byte key from exactly one provider."""
    return parse_key(load_secret(key_file, key_env_value, key_command))


def write_key_file(dest: str | os.PathLike[str]) -> Path:
    """Create ``dest`` (mode 0400, never overwritten) holding a new key as 64 hex characters."""
    p = Path(dest)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    except FileExistsError:
        raise KeyUnavailable(f"{p} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyUnavailable(f"cannot create key file {p}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o400)
        os.write(fd, secrets.token_bytes(KEY_BYTES).hex().encode("ascii"))
    finally:
        os.close(fd)
    return p

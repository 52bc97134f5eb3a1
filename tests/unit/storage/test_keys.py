import os
import resource
import sys

import pytest

from modelgate.storage.errors import KeyUnavailable
from modelgate.storage.keys import load_key, load_secret, parse_key, write_key_file


def _key_file(tmp_path, data: bytes, mode: int = 0o400, name: str = "k"):
    p = tmp_path / name
    p.write_bytes(data)
    p.chmod(mode)
    return p


def test_raw_and_hex_key_files(tmp_path):
    raw = os.urandom(32)
    assert load_key(_key_file(tmp_path, raw, name="raw")) == raw
    assert load_key(_key_file(tmp_path, raw.hex().encode() + b"\n", 0o600, name="hex")) == raw


@pytest.mark.parametrize("mode", [0o440, 0o404, 0o644, 0o410])
def test_key_file_open_to_group_or_others_is_refused(tmp_path, mode):
    key = os.urandom(32)
    p = _key_file(tmp_path, key.hex().encode(), mode)
    with pytest.raises(KeyUnavailable, match="group or others") as info:
        load_key(p)
    assert key.hex() not in str(info.value)


def test_missing_and_malformed_keys(tmp_path):
    with pytest.raises(KeyUnavailable, match="does not exist"):
        load_key(tmp_path / "nope")
    secret = b"z" * 40
    with pytest.raises(KeyUnavailable, match="32 raw bytes or 64 hex") as info:
        load_key(_key_file(tmp_path, secret))
    assert "zzzz" not in str(info.value)
    with pytest.raises(KeyUnavailable):
        parse_key(b"g" * 64)


def test_exactly_one_source(tmp_path):
    with pytest.raises(KeyUnavailable, match="exactly one"):
        load_key()
    with pytest.raises(KeyUnavailable, match="exactly one"):
        load_key(key_file=tmp_path / "k", key_env_value="x")


def test_env_value_and_command(tmp_path):
    key = os.urandom(32)
    assert load_key(key_env_value=key.hex() + "\n") == key
    cmd = (sys.executable, "-c", f"print('{key.hex()}')")
    assert load_key(key_command=cmd) == key
    with pytest.raises(KeyUnavailable, match="exited with status 3"):
        load_key(key_command=(sys.executable, "-c", "import sys; sys.exit(3)"))
    with pytest.raises(KeyUnavailable, match="not found"):
        load_key(key_command=("/nonexistent/kms-cli",))


def test_luks_secret_is_byte_exact_from_a_file(tmp_path):
    data = os.urandom(64)
    assert load_secret(_key_file(tmp_path, data)) == data


def test_loading_a_key_disables_core_dumps(tmp_path):
    load_key(key_env_value=os.urandom(32).hex())
    assert resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)


def test_keygen_writes_0400_hex_and_never_overwrites(tmp_path):
    p = write_key_file(tmp_path / "new.key")
    assert (p.stat().st_mode & 0o777) == 0o400
    text = p.read_bytes()
    assert len(text) == 64 and len(load_key(p)) == 32
    with pytest.raises(KeyUnavailable, match="already exists"):
        write_key_file(p)
    assert write_key_file(tmp_path / "other.key").read_bytes() != text

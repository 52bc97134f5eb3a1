"""``modelgate keygen|seal|verify|rekey|unseal`` as a user runs them (real subprocesses)."""

import os
import subprocess
import sys

import pytest


def _mg(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "modelgate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


@pytest.fixture
def model(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "qwen2"}')
    (d / "model.safetensors").write_bytes(os.urandom(2_500_000))
    return d


def test_cli_round_trip(tmp_path, model):
    r = _mg("keygen", "k1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    k1 = (tmp_path / "k1").read_text()
    assert oct((tmp_path / "k1").stat().st_mode & 0o777) == "0o400"
    assert _mg("keygen", "k2", cwd=tmp_path).returncode == 0
    assert _mg("keygen", "k1", cwd=tmp_path).returncode == 2  # never overwrites a key

    r = _mg("seal", model, "sealed", "--key-file", "k1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "sealed 2 files" in r.stderr
    assert "\r" not in r.stderr  # no progress bar when stderr is not a TTY
    r = _mg("verify", "sealed", "--key-file", "k1", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("ok:")

    r = _mg("rekey", "sealed", "--key-file", "k1", "--new-key-file", "k2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _mg("verify", "sealed", "--key-file", "k1", cwd=tmp_path)
    assert r.returncode == 2 and "not this sealed model's key" in r.stderr
    assert k1 not in r.stderr + r.stdout

    r = _mg("unseal", "sealed", "plain", "--key-file", "k2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "plain" / name).read_bytes() == (model / name).read_bytes()


def test_cli_refuses_open_key_file_and_tampering(tmp_path, model):
    assert _mg("keygen", "k", cwd=tmp_path).returncode == 0
    assert _mg("seal", model, "sealed", "--key-file", "k", cwd=tmp_path).returncode == 0
    (tmp_path / "k").chmod(0o644)
    r = _mg("verify", "sealed", "--key-file", "k", cwd=tmp_path)
    assert r.returncode == 2 and "group or others" in r.stderr
    (tmp_path / "k").chmod(0o400)
    obj = max((tmp_path / "sealed" / "objects").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(obj.read_bytes())
    data[-100] ^= 1
    obj.write_bytes(bytes(data))
    r = _mg("verify", "sealed", "--key-file", "k", cwd=tmp_path)
    assert r.returncode == 2 and "failed authentication" in r.stderr

import os

import pytest

from modelgate.storage import seal_ops


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_bytes(b'{"model_type": "toy", "secret_name": "HIDDEN-NAME-CANARY"}')
    (d / "model.safetensors").write_bytes(os.urandom(3 * (1 << 20) + 12345))
    (d / "sub" / "tokenizer.json").write_bytes(b'{"vocab": "TOKENIZER-CANARY"}' * 100)
    (d / "empty.txt").write_bytes(b"")
    return d


@pytest.fixture
def kek():
    return os.urandom(32)


@pytest.fixture
def sealed_dir(tmp_path, model_dir, kek):
    dest = tmp_path / "sealed"
    seal_ops.seal(model_dir, dest, kek, show=False)
    return dest

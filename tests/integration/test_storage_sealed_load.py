"""A sealed demo model loads through the engine's loader from memory, with no plaintext written.

The load runs in a child process under ``strace -f``: every file it opens for
writing (outside /dev and /proc) is a failure, and it must decrypt into memory
only.  The same model loads to the same weights and the same greedy tokens as
its plaintext twin.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

loader = pytest.importorskip("modelgate.engine.loader", reason="the engine's loader is not there yet")
demo = pytest.importorskip("modelgate.engine.demo_model", reason="demo-model is not there yet")

from modelgate.storage import seal_ops  # noqa: E402
from modelgate.storage.errors import SealedIntegrityError  # noqa: E402
from modelgate.storage.keys import write_key_file  # noqa: E402
from modelgate.storage.sealed import OBJECTS, open_sealed  # noqa: E402

PROMPT_IDS = [1, 5, 9, 42, 7]

CHILD = textwrap.dedent(
    """
    import json, sys
    from modelgate.storage.keys import load_key
    from modelgate.storage.sealed import open_sealed
    from modelgate.engine.loader import load_model
    import torch
    with open_sealed(sys.argv[1], load_key(sys.argv[2])) as files:
        lm = load_model(files, device="cpu", dtype="float32")
    ids = torch.tensor([[PROMPT]])
    with torch.no_grad():
        out = lm.model.generate(ids, max_new_tokens=8, do_sample=False)
    print("RESULT " + json.dumps(out[0].tolist()))
    """
).replace("PROMPT", ", ".join(map(str, PROMPT_IDS)))


@pytest.fixture(scope="module")
def sealed_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("sealed-demo")
    plain = demo.write_demo_model(root / "plain")
    key_file = write_key_file(root / "model.key")
    seal_ops.seal(plain, root / "sealed", bytes.fromhex(key_file.read_text()), show=False)
    return plain, root / "sealed", key_file


def _greedy(lm):
    import torch

    with torch.no_grad():
        return lm.model.generate(torch.tensor([PROMPT_IDS]), max_new_tokens=8, do_sample=False)[0].tolist()


def test_sealed_model_loads_like_its_plaintext(sealed_demo):
    plain, sealed, key_file = sealed_demo
    ref = loader.load_model(loader.DirectoryFiles(plain), device="cpu", dtype="float32")
    with open_sealed(sealed, bytes.fromhex(key_file.read_text())) as files:
        got = loader.load_model(files, device="cpu", dtype="float32")
    a, b = ref.model.state_dict(), got.model.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)
    assert got.tokenizer.chat_template == ref.tokenizer.chat_template
    assert _greedy(got) == _greedy(ref)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed (apt install strace)")
def test_loading_a_sealed_model_writes_no_plaintext_file(sealed_demo, tmp_path):
    plain, sealed, key_file = sealed_demo
    trace = tmp_path / "trace.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2,creat,rename,renameat,renameat2,link,linkat,truncate",
         "-o", str(trace), sys.executable, "-c", CHILD, str(sealed), str(key_file)],
        capture_output=True, text=True, timeout=100, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    tokens = json.loads(proc.stdout.split("RESULT ", 1)[1])
    ref = loader.load_model(loader.DirectoryFiles(plain), device="cpu", dtype="float32")
    assert tokens == _greedy(ref)

    lines = trace.read_text().splitlines()
    assert any(str(sealed) in ln for ln in lines), "strace saw nothing of the sealed model"
    writes = [ln for ln in lines if _writes_a_file(ln)]
    assert writes == [], "files opened for writing during a sealed load:\n" + "\n".join(writes[:20])
    assert not any(p.name.endswith(".safetensors") for p in tmp_path.rglob("*"))


_OPEN = re.compile(r'(open|openat|openat2|creat)\((?:AT_FDCWD, |\d+, )?"([^"]+)", ([^,)]+)')
_WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")


def _writes_a_file(line: str) -> bool:
    """An strace line that opened a real file for writing, or renamed / linked / truncated one."""
    if "= -1" in line:
        return False
    m = _OPEN.search(line)
    if m:
        wants_write = m.group(1) == "creat" or bool(_WRITE_FLAGS.search(m.group(3)))
        return wants_write and not m.group(2).startswith(("/dev/", "/proc/"))
    return bool(re.search(r"^\d+ +(rename|link|truncate)", line))


def test_tampered_weights_fail_before_any_tensor_is_built(sealed_demo, tmp_path):
    _, sealed, key_file = sealed_demo
    copy = tmp_path / "sealed"
    shutil.copytree(sealed, copy)
    big = max((copy / OBJECTS).iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(big.read_bytes())
    data[len(data) // 2] ^= 0x80
    big.write_bytes(bytes(data))
    with open_sealed(copy, bytes.fromhex(key_file.read_text())) as files, pytest.raises(SealedIntegrityError):
        loader.load_model(files, device="cpu", dtype="float32")

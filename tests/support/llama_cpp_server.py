"""llama.cpp's server (``llama-cpp-python[server]``) on 127.0.0.1, serving the demo model
converted to GGUF with the converter that ships in llama.cpp's source.

Needs ``llama_cpp`` importable (``pip install 'llama-cpp-python[server]'`` builds it) and
``LLAMA_CPP_SRC``: a llama.cpp source tree (the sdist's ``vendor/llama.cpp``) holding
``convert_hf_to_gguf.py`` and ``gguf-py``.  ``skip_reason()`` says what is missing.

The demo model's tokenizer is a small byte-level BPE of its own, which the converter
does not know by hash: it is declared ``qwen2``'s pre-tokenizer (the demo model is a
Qwen2), and the converter's sentencepiece attempt is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.net import free_port

_CONVERT = """
import sys
src, model, out = sys.argv[1:4]
sys.path[:0] = [src + "/gguf-py", src]
import convert_hf_to_gguf as c
try:
    from conversion import base
    text_model = base.TextModel
except ImportError:  # older trees: everything in the one script
    text_model = c.TextModel
def no_sentencepiece(self):
    raise FileNotFoundError("no sentencepiece model")
text_model._set_vocab_sentencepiece = no_sentencepiece
text_model.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
sys.argv = ["convert", model, "--outfile", out, "--outtype", "f32"]
c.main()
"""


def source() -> Path | None:
    src = os.environ.get("LLAMA_CPP_SRC")
    if src and (Path(src) / "convert_hf_to_gguf.py").is_file():
        return Path(src)
    return None


def skip_reason() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'llama-cpp-python[server]')"
    if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("sse_starlette") is None:
        return "llama-cpp-python's server extra is not installed"
    if source() is None:
        return "LLAMA_CPP_SRC does not name a llama.cpp source tree with convert_hf_to_gguf.py"
    return None


def convert(model_dir: Path, out: Path) -> Path:
    src = source()
    assert src is not None
    subprocess.run(
        [sys.executable, "-c", _CONVERT, str(src), str(model_dir), str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@contextmanager
def llama_server(gguf: Path, *, n_ctx: int = 512) -> Iterator[str]:
    """The server on a free port; its base URL (``.../v1``).  ``interrupt_requests`` is
    off: by default any request (a probe, a count) would end a running stream."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--interrupt_requests",
        "False",
        "--model_alias",
        "demo",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("llama.cpp's server did not start") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

"""``modelgate serve`` with no config: the embedded default serves the demo chat
model (made on first run in the cache directory) and the embedding model, offline."""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest
from tests.support.net import free_port as _free_port

from modelgate.engine.defaults import DEMO_CHAT_ID, EMBEDDING_ID, default_models


def test_default_models_make_the_demo_model_once(tmp_path):
    first = default_models(tmp_path)
    path = first[0]["path"]
    mtime = os.stat(f"{path}/model.safetensors").st_mtime_ns
    again = default_models(tmp_path)
    assert again == first and first[0]["id"] == DEMO_CHAT_ID
    assert os.stat(f"{path}/model.safetensors").st_mtime_ns == mtime
    assert [m["id"] for m in first][1:] == [EMBEDDING_ID]


@pytest.fixture
def served(tmp_path):
    port = _free_port()
    env = {**os.environ, "MODELGATE_SERVER__CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelgate", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode()[-2000:])
        time.sleep(0.3)
    else:
        proc.kill()
        raise AssertionError("serve did not become ready")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_serve_with_no_config_answers_chat_and_embeddings(served, tmp_path):
    client = openai.OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0)
    ids = {m.id for m in client.models.list().data}
    assert {DEMO_CHAT_ID, EMBEDDING_ID} <= ids
    r = client.chat.completions.create(
        model=DEMO_CHAT_ID, messages=[{"role": "user", "content": "Hi!"}], max_tokens=8, temperature=0
    )
    assert r.usage.completion_tokens == 8
    e = client.embeddings.create(model=EMBEDDING_ID, input=["hello", "world"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 384
    assert (tmp_path / "cache" / "demo-chat-tiny" / "model.safetensors").is_file()

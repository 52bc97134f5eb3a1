"""A sealed model served in-process: the local backend decrypts it into memory
with the configured key and answers exactly like its plaintext twin; a wrong
key keeps the model out of service with a clear reason."""

from contextlib import asynccontextmanager

import openai
import pytest
from tests.support.gateway import running_gateway

from modelgate.config import build_config
from modelgate.engine.demo_model import write_demo_model

seal_ops = pytest.importorskip("modelgate.storage.seal_ops")
keys = pytest.importorskip("modelgate.storage.keys")


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    root = tmp_path_factory.mktemp("sealed")
    plain = write_demo_model(root / "plain")
    key_file = keys.write_key_file(root / "model.key")
    seal_ops.seal(plain, root / "sealed", keys.load_key(key_file), show=False)
    other = keys.write_key_file(root / "other.key")
    return plain, root / "sealed", key_file, other


@asynccontextmanager
async def _serve(models):
    async with running_gateway(build_config({"models": models}, source="test", environ={})) as url:
        yield openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


async def test_sealed_model_answers_like_its_plaintext_twin(sealed):
    plain, sealed_dir, key_file, _ = sealed
    async with _serve(
        [
            {"id": "plain", "backend": "local", "path": str(plain)},
            {"id": "sealed", "backend": "local", "path": str(sealed_dir), "key_file": str(key_file)},
        ]
    ) as client:
        msgs = [{"role": "user", "content": "Grüß Gott!"}]
        a = await client.chat.completions.create(model="plain", messages=msgs, max_tokens=12, temperature=0)
        b = await client.chat.completions.create(model="sealed", messages=msgs, max_tokens=12, temperature=0)
        assert a.choices[0].message.content == b.choices[0].message.content
        assert b.usage.completion_tokens == 12


async def test_wrong_key_keeps_the_model_out_of_service(sealed):
    _, sealed_dir, _, other = sealed
    async with _serve(
        [{"id": "sealed", "backend": "local", "path": str(sealed_dir), "key_file": str(other)}]
    ) as client:
        with pytest.raises(openai.APIStatusError) as err:
            await client.chat.completions.create(
                model="sealed", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        assert err.value.status_code >= 500

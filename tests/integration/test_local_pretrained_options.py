"""from_pretrained's options on a local model (issue 16 item 6), through the gateway and
``modelgate worker``'s flags: a device map and an attention implementation serve the
same greedy text as the default load; a quantization method whose library is absent
is a load failure naming it in /ready, not retried, and the gateway lives on."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.integration.test_local_load_failures import FAST, ready_reason
from tests.support.gateway import make_config, running_gateway

from modelgate.engine.defaults import ensure_demo_model


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_demo_model(tmp_path_factory.mktemp("cache"))


def local(model_id: str, path: Path, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "backend": "local", "path": str(path), "device": "cpu", **FAST, **extra}


async def complete(http: aiohttp.ClientSession, url: str, model: str) -> dict[str, Any]:
    body = {"model": model, "prompt": "def add(a, b):", "max_tokens": 12, "temperature": 0}
    for _ in range(200):  # the models load in the background
        async with http.post(url + "/v1/completions", json=body) as r:
            if r.status == 200:
                return await r.json()  # type: ignore[no-any-return]
            assert r.status == 503, await r.text()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{model} never answered")


async def test_device_map_and_attention_serve_the_same_text(demo: Path) -> None:
    pytest.importorskip("accelerate")
    config = make_config(
        {
            "models": [
                local("plain", demo),
                local("mapped", demo, device_map="cpu", attn_implementation="eager"),
                local("auto", demo, device_map="auto"),
            ]
        }
    )
    async with running_gateway(config) as url, aiohttp.ClientSession() as http:
        texts = {m: (await complete(http, url, m))["choices"][0]["text"] for m in ("plain", "mapped", "auto")}
    assert texts["plain"] and texts["mapped"] == texts["plain"] == texts["auto"], texts


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed here"
)
async def test_a_quantization_whose_library_is_absent_is_named_and_not_retried(demo: Path) -> None:
    quant = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    config = make_config({"models": [local("q4", demo, quantization=quant), local("plain", demo)]})
    async with running_gateway(config) as url, aiohttp.ClientSession() as http:
        reason = await ready_reason(http, url, "q4", "failed to load")
        assert "quantization 'bitsandbytes' cannot load here" in reason and "not retried" in reason
        assert (await complete(http, url, "plain"))["choices"][0]["text"]
        async with http.post(url + "/v1/completions", json={"model": "q4", "prompt": "x"}) as r:
            assert r.status == 503 and "bitsandbytes" in (await r.json())["error"]["message"]


def test_worker_flags_reach_the_model_config() -> None:
    from modelgate.cli import _parser
    from modelgate.errors import ConfigError
    from modelgate.worker.server import worker_config

    argv = ["worker", "--model", "/m", "--device-map", "auto", "--attn-implementation", "sdpa"]
    argv += ["--quantization", '{"quant_method": "torchao", "quant_type": "int8_weight_only"}']
    model = worker_config(_parser().parse_args(argv), environ={}).models[0]
    assert model.device_map == "auto" and model.attn_implementation == "sdpa"
    assert model.quantization == {"quant_method": "torchao", "quant_type": "int8_weight_only"}
    plain = worker_config(_parser().parse_args(["worker", "--model", "/m"]), environ={}).models[0]
    assert plain.device_map is None and plain.quantization is None and plain.attn_implementation is None
    with pytest.raises(ConfigError, match="--quantization"):
        worker_config(_parser().parse_args([*argv[:3], "--quantization", "{nope"]), environ={})

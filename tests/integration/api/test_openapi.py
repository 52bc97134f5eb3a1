"""Our OpenAPI document: valid OpenAPI 3.1, every route we serve in it (and nothing
else), the configured model ids offered to clients; and schemathesis, every check,
against a real gateway with a model of each backend kind (local demo model, TGI over
a fake TGI server, an OpenAI-compatible upstream), keys configured, an admin key for
/admin/*.  The run is bounded (``MAX_EXAMPLES`` per operation and phase)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest
import yaml
from openapi_spec_validator import validate
from tests.integration.api.conftest import ADMIN_KEY, API_KEY
from tests.integration.fakes import tgi
from tests.integration.fakes.core import FakeServer, Faults
from tests.integration.fakes.harness import write_tokenizer_dir
from tests.support.gateway import running_app
from tests.support.openai_upstream import FakeOpenAI

from modelgate.api import auth
from modelgate.api.app import App
from modelgate.config import load_config
from modelgate.gateway import build_gateway

# Failures that belong to open issues being fixed elsewhere, by a text of their answer.
# Remove an entry when its fix lands: then the run must be clean without it.
KNOWN = {
    # issue 15 item 2: repetition_penalty or top_p of 5e-324 makes the local engine's
    # logits NaN, and the batch fails (a 500)
    "probability tensor contains either `inf`, `nan`": "issue 15 item 2",
}
MAX_EXAMPLES = int(os.environ.get("MODELGATE_SCHEMATHESIS_EXAMPLES", "12"))
LIMITS = {"max_tokens": 16, "max_n": 2, "max_stop": 2, "max_messages": 4, "max_embedding_inputs": 4,
          "max_top_logprobs": 2}  # fmt: skip


def config_raw(demo: Path, tokenizer: Path, tgi_url: str, upstream: FakeOpenAI) -> dict[str, Any]:
    return {
        "auth": {"api_keys": [API_KEY], "admin_keys": [ADMIN_KEY]},
        "limits": LIMITS,
        "server": {"access_log": False},
        "models": [
            {"id": "demo", "backend": "local", "path": str(demo), "device": "cpu"},
            {
                "id": "tgi-chat",
                "backend": "tgi",
                "tokenizer": str(tokenizer),
                "endpoints": [{"url": tgi_url}],
            },
            {
                "id": "gpt-test",
                "aliases": ["gpt-alias"],
                "backend": "openai",
                "endpoints": [{"url": upstream.url, "upstream_model": upstream.model}],
            },
            {
                "id": "embed-test",
                "backend": "openai",
                "task": "embedding",
                "endpoints": [{"url": upstream.url, "upstream_model": upstream.model}],
            },
        ],
    }


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from modelgate.engine.demo_model import write_demo_model

    path = Path(write_demo_model(tmp_path_factory.mktemp("demo") / "chat"))
    # random weights rarely say EOS, and without max_tokens the engine writes up to its
    # context (issue 15 item 5): a short context keeps each fuzzed answer short
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 96
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
async def served(
    demo_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, App]]:
    # the fuzzer sends many wrong keys from one address: keep the failed-key throttle
    # from refusing the right ones too (issue 15 item 3), or most cases would be 429s
    monkeypatch.setattr(auth, "FAILURES_PER_MINUTE", 1 << 30, raising=False)
    fake_tgi = await FakeServer(tgi.make_app(Faults(tokens=3))).start()
    upstream = await FakeOpenAI().start()
    raw = {
        "health": {"interval_s": 0.2, "timeout_s": 1},
        **config_raw(demo_model, write_tokenizer_dir(tmp_path / "tok"), fake_tgi.url, upstream),
    }
    # a real file, so that POST /admin/reload reads it again (and finds nothing changed)
    path = tmp_path / "modelgate.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(str(path), environ={})
    app = build_gateway(config)
    try:
        async with running_app(app) as base:
            async with aiohttp.ClientSession() as s:  # every model ready before the run
                for _ in range(200):
                    async with s.get(base + "/ready") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.1)
            yield base, app
    finally:
        await upstream.stop()
        await fake_tgi.stop()


async def fetch_document(base: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(base + "/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}) as r,
    ):
        assert r.status == 200
        doc: dict[str, Any] = await r.json()
        return doc


async def test_the_document_is_valid_openapi_3_1_and_lists_every_route(served: tuple[str, App]) -> None:
    base, app = served
    doc = await fetch_document(base)
    validate(doc)  # openapi-spec-validator: OpenAPI 3.1 and its JSON Schema dialect
    assert doc["openapi"] == "3.1.0"
    documented = sorted((m.upper(), p) for p, ops in doc["paths"].items() for m in ops)
    assert documented == app.routes.table()
    model = doc["paths"]["/v1/models/{model}"]["get"]["parameters"][0]
    assert (model["name"], model["in"], model["required"]) == ("model", "path", True)
    assert model["schema"]["enum"] == ["demo", "tgi-chat", "gpt-test", "gpt-alias", "embed-test"]
    schemas = doc["components"]["schemas"]
    assert schemas["CreateChatCompletionRequest"]["properties"]["model"]["enum"] == [
        "demo",
        "tgi-chat",
        "gpt-test",
        "gpt-alias",
    ]
    assert schemas["CreateEmbeddingRequest"]["properties"]["model"]["enum"] == ["embed-test"]
    assert schemas["CreateChatCompletionRequest"]["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 16
    assert doc["paths"]["/admin/keys"]["get"]["security"] == [{"adminKey": []}]
    assert doc["paths"]["/health"]["get"]["security"] == []


def schemathesis_config(path: Path) -> Path:
    path.write_text(
        f"""
[generation]
max-examples = {MAX_EXAMPLES}

[auth.openapi.apiKey]
bearer = "{API_KEY}"

[auth.openapi.adminKey]
bearer = "{ADMIN_KEY}"

# A parameter the chosen model's backend cannot honour (logprobs or penalties on the
# local engine, n > 1 on TGI's /generate) is a 400 that one request schema for every
# model cannot express: on the inference operations, valid data may also get a 400.
[[operations]]
include-method = "POST"
include-path-regex = "^/v1/"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "429"]
"""
    )
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_schemathesis_with_every_check_finds_nothing(served: tuple[str, App], tmp_path: Path) -> None:
    base, _ = served
    doc = await fetch_document(base)
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(doc))
    st = Path(sys.executable).with_name("st")
    cmd = [
        str(st),
        "--config-file",
        str(schemathesis_config(tmp_path / "schemathesis.toml")),
        "run",
        str(schema),
        "--url",
        base,
        "--checks",
        "all",
        "--seed",
        "1",
        "--workers",
        "1",
        "--report",
        "junit",
        "--report-junit-path",
        str(tmp_path / "junit.xml"),
        "--no-color",
        "--continue-on-failure",
    ]
    done = await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    out = done.stdout + done.stderr
    print(out)
    generated = re.search(r"(\d+) generated", out)
    suites = ElementTree.parse(tmp_path / "junit.xml").getroot()
    operations = [case.get("name") for case in suites.iter("testcase")]
    print(f"schemathesis: {generated.group(1) if generated else '?'} cases over {len(operations)} operations")
    assert sorted(operations) == sorted(f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops)
    assert not list(suites.iter("error")), out[-6000:]
    unknown = []
    for failure in suites.iter("failure"):
        for case in re.split(r"\n(?=\d+\. Test Case ID)", failure.text or ""):
            if not any(marker in case for marker in KNOWN):
                unknown.append(case)
    assert not unknown, "\n\n".join(unknown)[-8000:]
    assert done.returncode in (0, 1), out[-6000:]

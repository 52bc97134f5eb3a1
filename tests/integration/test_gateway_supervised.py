"""The gateway supervising a real `modelgate worker` (issue 5 end to end): SIGKILL the
worker under traffic, the supervisor restarts it, the router takes it back, the
visibility routes say so, and shutdown leaves nothing running."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from pathlib import Path

import aiohttp
import openai
import pytest
from tests.support.gateway import make_config, running_gateway
from tests.support.net import free_port
from tests.support.worker import worker_argv

from modelgate.check import run_check
from modelgate.engine.demo_model import write_demo_model

KEY = "mg_sup_0123456789abcdefghij"
ADMIN = "mg_supadmin_0123456789abcdef"


async def admin(base: str) -> dict:
    async with (
        aiohttp.ClientSession() as s,
        s.get(base + "/admin/endpoints", headers={"Authorization": f"Bearer {ADMIN}"}) as r,
    ):
        return await r.json()


async def wait_for(cond, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if await cond():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.slow
async def test_killed_worker_is_restarted_and_readmitted(tmp_path: Path) -> None:
    model = write_demo_model(tmp_path / "demo")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gw_port = free_port()
    raw = {
        "server": {"port": gw_port},
        "auth": {"api_keys": [KEY], "admin_keys": [ADMIN]},
        "supervisor": {"state_dir": str(tmp_path / "state")},
        "models": [
            {
                "id": "demo",
                "backend": "tgi",
                "tokenizer": str(model),
                "endpoints": [
                    {
                        "url": url,
                        "launch": {
                            "kind": "process",
                            "command": worker_argv(model, port),
                            "env": {"OMP_NUM_THREADS": "1"},
                            "backoff_base_s": 0.1,
                        },
                    }
                ],
            }
        ],
    }
    config = make_config(raw)
    async with running_gateway(config, gw_port) as base:

        async def ready() -> bool:
            models = (await admin(base))["models"]
            return models[0]["ready"]

        await wait_for(ready, 90, "the supervised worker to become ready")
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=30)
        r = await client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert r.choices[0].finish_reason in ("stop", "length")

        ep = (await admin(base))["models"][0]["endpoints"][0]
        pid = ep["lifecycle"]["info"]["pid"]
        os.kill(int(pid), signal.SIGKILL)

        async def restarted() -> bool:
            e = (await admin(base))["models"][0]["endpoints"][0]
            return e["lifecycle"]["info"]["restarts"] >= 1 and e["lifecycle"]["info"]["pid"] != pid

        await wait_for(restarted, 30, "a restart")
        await wait_for(ready, 90, "the restarted worker to be readmitted")
        r = await client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert r.choices[0].finish_reason in ("stop", "length")
        async with (
            aiohttp.ClientSession() as s,
            s.get(base + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as m,
        ):
            text = await m.text()
        assert f'modelgate_supervised_restarts{{endpoint="{url}",model="demo"}} 1.0' in text
        new_pid = (await admin(base))["models"][0]["endpoints"][0]["lifecycle"]["info"]["pid"]
        # `modelgate check` asks the running gateway about what it supervises
        out = io.StringIO()
        assert await asyncio.to_thread(run_check, config, out=out) == 0
        row = next(line for line in out.getvalue().splitlines() if url in line)
        assert "ready, 1 restarts, exit -9" in row
    # the gateway's shutdown stopped what it launched
    assert (
        not Path(f"/proc/{new_pid}").exists()
        or "zombie" in Path(f"/proc/{new_pid}/status").read_text().lower()
    )

"""Router.apply with a scripted supervisor: an unchanged model keeps its pool, a changed
on-demand model whose children run stays loaded (nothing stopped), a removed one's
children are stopped once its requests are done."""

from __future__ import annotations

import asyncio
from typing import Any

from modelgate.backends.base import BackendContext
from modelgate.config import Config, build_config
from modelgate.http.client import UpstreamClient
from modelgate.router.router import Router
from modelgate.services import Services


class Life:
    def __init__(self) -> None:
        self.state = "stopped"

    def info(self) -> dict[str, Any]:
        return {"state": self.state, "pid": None, "last_reason": None}


class FakeSupervisor:
    def __init__(self, urls: list[str]) -> None:
        self.lifecycle = {u: Life() for u in urls}
        self.launched: list[str] = []
        self.halted: list[str] = []

    async def launch(self, url: str) -> None:
        self.launched.append(url)
        self.lifecycle[url].state = "ready"

    async def halt(self, url: str) -> None:
        self.halted.append(url)
        self.lifecycle[url].state = "stopped"

    def snapshot(self) -> list[dict[str, Any]]:
        return []

    async def stop(self) -> None:
        pass

    async def apply(self, config: Any) -> dict[str, list[str]]:
        return {}


URL = "http://127.0.0.1:9"


def config(**w: Any) -> Config:
    launched = {
        "id": "w",
        "backend": "openai",
        "load": "on_demand",
        "endpoints": [{"url": URL, "launch": {"kind": "process", "command": ["x"]}}],
        **w,
    }
    other = {"id": "o", "backend": "openai", "endpoints": [{"url": "http://127.0.0.1:10"}]}
    models = [other] if w.get("gone") else [launched, other]
    for m in models:
        m.pop("gone", None)
    return build_config({"health": {"interval_s": 100}, "models": models}, source="t.yaml", environ={})


async def test_apply_keeps_unchanged_pools_and_running_children() -> None:
    sup = FakeSupervisor([URL])
    cfg = config()
    http = UpstreamClient()
    router = Router(cfg, BackendContext(config=cfg, http=http, services=Services(supervisor=sup)))
    await router.start()
    try:
        other = router.resolve("o")
        async with router.demands["w"].use():
            pass
        assert sup.launched == [URL] and router.demands["w"].state == "loaded"

        diff = await router.apply(config(queue_size=7))
        assert diff["changed"] == ["w"] and diff["unchanged"] == ["o"]
        assert router.resolve("o") is other  # untouched
        assert router.resolve("w").model.queue_size == 7
        assert router.demands["w"].state == "loaded"  # its child kept running: still loaded
        await asyncio.sleep(0.2)  # the old pool retired
        assert sup.halted == []

        # a request in flight on the removed model finishes before its child is stopped
        async with router.demands["w"].use():
            diff = await router.apply(config(gone=True))
            assert diff["removed"] == ["w"] and "w" not in router.demands
            await asyncio.sleep(0.2)
            assert sup.halted == []
        await asyncio.sleep(0.2)
        assert sup.halted == [URL]
    finally:
        await router.close()
        await http.close()

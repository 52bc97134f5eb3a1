"""Run one fake upstream in this process: ``run.py tgi --port N [--faults JSON]``.
(OpenAI/vLLM-style upstreams are ``tests/support/openai_upstream.py``, in process.)

Prints ``PORT <n>`` once listening, then serves until killed."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
)


async def _main(kind: str, port: int, faults: dict[str, object]) -> None:
    from tests.integration.fakes import tgi
    from tests.integration.fakes.core import FakeServer, Faults

    f = Faults()
    f.update(faults)
    server = FakeServer(tgi.make_app(f))
    server.port = port
    await server.start()
    print(f"PORT {server.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["tgi"])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--faults", default="{}")
    a = p.parse_args()
    asyncio.run(_main(a.kind, a.port, json.loads(a.faults)))

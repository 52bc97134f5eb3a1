"""Out of memory by a real allocation limit: the worker's address space is capped
(RLIMIT_AS) after it loaded, then a burst of long prompts needs more than the cap.
The requests that cannot get memory fail with TGI's 429 ``overloaded`` (the
gateway fails over and answers 503); the worker lives on and answers the next."""

import asyncio
import re
import resource
import sys

import aiohttp
import pytest
from tests.support.worker import start_worker

from modelgate.engine.demo_model import write_demo_model

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(resource, "prlimit"), reason="needs Linux prlimit"
)

HEADROOM = 300 << 20


async def _generate(session, url, text, n):
    body = {"inputs": text, "parameters": {"max_new_tokens": n}}
    async with session.post(f"{url}/generate", json=body) as r:
        return r.status, await r.json()


def _vm_size(pid):
    status = open(f"/proc/{pid}/status").read()  # noqa: SIM115
    return int(re.search(r"VmSize:\s+(\d+) kB", status).group(1)) * 1024


async def test_out_of_memory_fails_requests_not_the_worker(tmp_path):
    model = write_demo_model(tmp_path / "small", size="small")
    proc, url = start_worker(model, "--max-batch-size", "32")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as s:
            assert (await _generate(s, url, "hello", 3))[0] == 200
            resource.prlimit(
                proc.pid, resource.RLIMIT_AS, (_vm_size(proc.pid) + HEADROOM, resource.RLIM_INFINITY)
            )
            burst = await asyncio.gather(
                *(_generate(s, url, f"{i} hello world " * 200, 300) for i in range(32))
            )
            statuses = [status for status, _ in burst]
            assert set(statuses) <= {200, 429}, burst
            failed = [body for status, body in burst if status == 429]
            assert failed, "the cap was never hit: nothing was tested"
            assert all(b["error_type"] == "overloaded" and "memory" in b["error"] for b in failed)
            status, body = await _generate(s, url, "hello again", 5)
            assert status == 200 and body["generated_text"]
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=20)

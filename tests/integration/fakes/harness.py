"""Test harness: a tiny tokenizer directory, and a Router over fake upstreams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from modelgate.backends.base import BackendContext
from modelgate.config import Config, build_config
from modelgate.http.client import UpstreamClient
from modelgate.router.router import Router
from modelgate.types import ChatMessage, Chunk, GenerationRequest, SamplingParams

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_tokenizer_dir(dest: Path) -> Path:
    """A word-level tokenizer and a ChatML template: enough for templates and counts."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system", "hello", "world"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    dest.mkdir(parents=True, exist_ok=True)
    tok.save(str(dest / "tokenizer.json"))
    cfg = {"chat_template": CHATML, "eos_token": "<|im_end|>", "bos_token": None}
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dest


def router_config(urls: list[str], *, health: dict[str, Any] | None = None, **model: Any) -> Config:
    raw = {
        "health": {"interval_s": 0.1, "timeout_s": 0.5, "jitter": 0.1, **(health or {})},
        "models": [
            {
                "id": "m",
                "backend": model.pop("backend", "tgi"),
                "endpoints": [{"url": u} for u in urls],
                **model,
            }
        ],
    }
    return build_config(raw, source="test", environ={})


@asynccontextmanager
async def running_router(config: Config, **kwargs: Any) -> AsyncIterator[Router]:
    async with UpstreamClient() as http:
        router = Router(config, BackendContext(config=config, http=http), **kwargs)
        await router.start()
        try:
            yield router
        finally:
            await router.close()


def chat(text: str = "hello world", *, stream: bool = True, **sampling: Any) -> GenerationRequest:
    return GenerationRequest(
        kind="chat",
        model="m",
        sampling=SamplingParams(**sampling),
        messages=(ChatMessage(role="user", content=text),),
        stream=stream,
    )


async def run(router: Router, request: GenerationRequest | None = None) -> list[Chunk]:
    return [c async for c in router.generate(request or chat())]


async def run_partial(
    router: Router, request: GenerationRequest | None = None
) -> tuple[list[Chunk], Exception | None]:
    got: list[Chunk] = []
    try:
        async for c in router.generate(request or chat()):
            got.append(c)
    except Exception as exc:
        return got, exc
    return got, None


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)

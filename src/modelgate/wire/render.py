"""Internal chunks -> OpenAI response bodies (dicts, serialized with orjson by the api).

Pure functions; no torch, no web framework.  Bodies follow
``shared/specs/openai-openapi.yaml`` (validated in tests).
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelgate.types import Chunk, EmbeddingResult, GenerationRequest, Usage


def usage_body(u: Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }
    if u.details:  # the upstream's breakdowns (cached_tokens, reasoning_tokens...), as sent
        body.update(u.details)
    return body


_TEXT_LOGPROBS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[Any] = field(default_factory=list)
    # completions' logprobs: tokens, token_logprobs, top_logprobs, text_offset
    text_logprobs: dict[str, list[Any]] = field(default_factory=dict)
    reasoning: dict[str, list[str]] = field(default_factory=dict)  # by the upstream's name for it


def _merge_tool_calls(acc: dict[int, dict[str, Any]], deltas: Iterable[Mapping[str, Any]]) -> None:
    for pos, d in enumerate(deltas):
        idx = d.get("index", pos)
        cur = acc.setdefault(idx, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if d.get("id"):
            cur["id"] = d["id"]
        fn = d.get("function") or {}
        if fn.get("name"):
            cur["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            cur["function"]["arguments"] += fn["arguments"]


class Aggregator:
    """Collects a stream of chunks into one non-streaming answer."""

    def __init__(self) -> None:
        self.choices: dict[int, _Choice] = {}
        self.usage: Usage | None = None
        self.meta: dict[str, Any] = {}

    def finish_reasons(self) -> tuple[str, ...]:
        return tuple(self.choices[i].finish_reason or "" for i in sorted(self.choices))

    def add(self, chunk: Chunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.meta:
            self.meta.update(chunk.meta)
        if not chunk.has_content:
            return
        c = self.choices.setdefault(chunk.index, _Choice())
        if chunk.text:
            c.text.append(chunk.text)
        if chunk.reasoning:
            for key, text in chunk.reasoning.items():
                c.reasoning.setdefault(key, []).append(text)
        if chunk.tool_calls:
            _merge_tool_calls(c.tool_calls, chunk.tool_calls)
        if chunk.logprobs:
            c.logprobs.extend(chunk.logprobs.get("content") or ())
            for key in _TEXT_LOGPROBS:
                if key in chunk.logprobs:
                    c.text_logprobs.setdefault(key, []).extend(chunk.logprobs[key])
        if chunk.finish_reason:
            c.finish_reason = chunk.finish_reason

    def chat_body(self, rid: str, model: str, created: int) -> dict[str, Any]:
        choices = []
        for idx in sorted(self.choices):
            c = self.choices[idx]
            message: dict[str, Any] = {"role": "assistant", "content": "".join(c.text), "refusal": None}
            for key, parts in c.reasoning.items():
                message[key] = "".join(parts)
            if c.tool_calls:
                message["tool_calls"] = [c.tool_calls[k] for k in sorted(c.tool_calls)]
                if not c.text:
                    message["content"] = None
            choices.append(
                {
                    "index": idx,
                    "message": message,
                    "logprobs": {"content": c.logprobs, "refusal": None} if c.logprobs else None,
                    "finish_reason": c.finish_reason,
                }
            )
        return self._envelope("chat.completion", rid, model, created, choices)

    def completion_body(self, rid: str, model: str, created: int) -> dict[str, Any]:
        choices = [
            {
                "index": idx,
                "text": "".join(self.choices[idx].text),
                "logprobs": self.choices[idx].text_logprobs or None,
                "finish_reason": self.choices[idx].finish_reason,
            }
            for idx in sorted(self.choices)
        ]
        return self._envelope("text_completion", rid, model, created, choices)

    def _envelope(self, obj: str, rid: str, model: str, created: int, choices: list[Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": rid,
            "object": obj,
            "created": created,
            "model": model,
            "choices": choices,
        }
        if self.meta:
            body.update(self.meta)
        if self.usage is not None:
            body["usage"] = usage_body(self.usage)
        return body


class ChunkRenderer:
    """Renders streamed chunks for one request (chat or completion)."""

    def __init__(self, request: GenerationRequest, rid: str, model: str) -> None:
        self.chat = request.kind == "chat"
        self.include_usage = request.include_usage
        self.head = {
            "id": rid,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        self._role_sent: set[int] = set()

    def event(self, chunk: Chunk) -> bytes | None:
        """The SSE event for one chunk, or None when nothing is to be sent."""
        if chunk.usage is not None and not chunk.has_content and not self.include_usage:
            return None
        if chunk.raw is not None:  # the upstream's own SSE bytes
            return chunk.raw or None
        body = self.render(chunk)
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def render(self, chunk: Chunk) -> dict[str, Any]:
        if chunk.usage is not None and not chunk.has_content:
            return {**self.head, "choices": [], "usage": usage_body(chunk.usage)}
        if self.chat:
            delta: dict[str, Any] = {}
            if chunk.index not in self._role_sent:
                delta["role"] = "assistant"
                self._role_sent.add(chunk.index)
            if chunk.text:
                delta["content"] = chunk.text
            if chunk.reasoning:
                delta.update(chunk.reasoning)
            if chunk.tool_calls:
                delta["tool_calls"] = [
                    {"index": tc.get("index", i), **{k: v for k, v in tc.items() if k != "index"}}
                    for i, tc in enumerate(chunk.tool_calls)
                ]
            choice: dict[str, Any] = {
                "index": chunk.index,
                "delta": delta,
                "logprobs": {"content": list(chunk.logprobs.get("content") or ()), "refusal": None}
                if chunk.logprobs
                else None,
                "finish_reason": chunk.finish_reason,
            }
        else:
            choice = {
                "index": chunk.index,
                "text": chunk.text,
                "logprobs": dict(chunk.logprobs) if chunk.logprobs and "tokens" in chunk.logprobs else None,
                "finish_reason": chunk.finish_reason,
            }
        return {**self.head, "choices": [choice]}


def embedding_body(result: EmbeddingResult, model: str, encoding: str) -> dict[str, Any]:
    data = []
    for i, vec in enumerate(result.vectors):
        emb: Any = list(vec)
        if encoding == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


def models_body(models: Iterable[tuple[str, str]], created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": mid, "object": "model", "created": created, "owned_by": owner} for mid, owner in models
        ],
    }

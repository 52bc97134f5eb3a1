"""Token counts for answers an OpenAI-compatible upstream sent without ``usage``.

llama.cpp's server never sends a usage chunk in streams; older vLLM and Ollama ignore
``stream_options.include_usage``; some servers leave ``usage`` out of whole answers.
The client is still owed one, so it is counted here, with the upstream's own
tokenizer where it has one (found once, at the first answer without usage):

- ``vllm``: ``POST /tokenize`` with the request's ``messages`` (the chat template
  applied, ``add_generation_prompt``) or its ``prompt``; the text generated with
  ``add_special_tokens: false``.  Exact.
- ``llama.cpp`` (llama.cpp's own server): ``POST /apply-template`` renders the
  messages, ``POST /tokenize`` counts them (``add_special``) and the text generated.  Exact.
- ``llama-cpp-python`` (its server): ``POST /extras/tokenize`` counts the text
  generated exactly; it renders chat templates without exposing them, so a chat
  prompt's count is the messages' text tokenized: an estimate (it leaves out the
  template's own tokens).
- anything else (Ollama, hosted APIs): an estimate of every count, one token per
  four bytes of UTF-8; a chat template's own tokens are estimated as ChatML's and
  Llama 3's are: five per message and three to open the reply.

A count is never worth failing an answer for: any failure falls back to the estimate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import orjson

from modelgate.backends import http
from modelgate.errors import UpstreamConnectError, UpstreamDisconnected, UpstreamError, UpstreamTimeout
from modelgate.types import Usage

log = logging.getLogger("modelgate.backends.tokens")

Kind = Literal["vllm", "llama.cpp", "llama-cpp-python", "none"]
_PROBE = "hello world"
_PER_MESSAGE = 5  # a chat template's tokens around each message (ChatML, Llama 3)
_REPLY = 3  # and those that open the assistant's reply


def estimate(text: str) -> int:
    """About one token per four bytes (BPE vocabularies on English and code)."""
    return (len(text.encode("utf-8", "surrogatepass")) + 3) // 4


def _message_text(messages: Iterable[Any]) -> list[str]:
    out = []
    for m in messages:
        if not isinstance(m, Mapping):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(str(p.get("text") or "") for p in content if isinstance(p, Mapping))
        out.append(str(content or ""))
        for call in m.get("tool_calls") or ():
            if isinstance(call, Mapping):
                out.append(orjson.dumps(call.get("function") or {}).decode())
    return out


def estimate_prompt(body: Mapping[str, Any]) -> int:
    if "messages" in body:
        texts = _message_text(body.get("messages") or ())
        return sum(estimate(t) + _PER_MESSAGE for t in texts) + _REPLY
    prompt = body.get("prompt")
    return estimate(prompt if isinstance(prompt, str) else "")


class UpstreamTokenizer:
    """Counts with one upstream's tokenizer (its root URL: the endpoint's without ``/v1``)."""

    def __init__(
        self,
        client: http.UpstreamClient,
        url: str,
        headers: Mapping[str, str],
        connect_s: float,
        timeout_s: float = 5.0,
    ):
        self._timeout_s = timeout_s  # a count that takes longer is estimated instead
        root = url.rstrip("/")
        root = root[:-3] if root.endswith("/v1") else root
        self._up = http.Endpoint(client, root, headers=headers, connect_s=connect_s)
        self.kind: Kind | None = None
        self._baseline = 0  # what an empty text counts (a BOS token added), llama-cpp-python
        self._lock = asyncio.Lock()

    @property
    def exact(self) -> bool:
        return self.kind in ("vllm", "llama.cpp")

    async def usage(self, body: Mapping[str, Any], completions: Iterable[str]) -> Usage:
        """The usage of an answer to ``body`` (what was sent upstream) whose choices
        generated ``completions``."""
        texts = [t for t in completions if t]
        try:
            async with asyncio.timeout(self._timeout_s):
                kind = await self._kind(body.get("model"))
                prompt = await self._prompt(kind, body)
                completion = 0
                for text in texts:
                    completion += await self._text(kind, body.get("model"), text)
            return Usage(prompt, completion)
        except (UpstreamError, KeyError, TypeError, ValueError, orjson.JSONDecodeError, TimeoutError) as exc:
            log.warning("counting tokens upstream failed, estimating: %r", exc)
            return Usage(estimate_prompt(body), sum(estimate(t) for t in texts))

    async def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        resp = await self._up.post(path, orjson.dumps(body))
        return await http.read_json(resp, where=self._up.where, limit=16 << 20)

    async def _try(self, path: str, body: Mapping[str, Any]) -> Any:
        """The answer, or None where the upstream answered that it has no such thing;
        an upstream that did not answer raises (nothing is concluded from it)."""
        try:
            return await self._post(path, body)
        except (UpstreamConnectError, UpstreamTimeout, UpstreamDisconnected):
            raise
        except (UpstreamError, orjson.JSONDecodeError):
            return None

    async def _kind(self, model: Any) -> Kind:
        if self.kind is not None:
            return self.kind
        async with self._lock:
            if self.kind is None:
                self.kind = await self._find(model)
                how = "exact counts" if self.exact else "estimated counts"
                log.info("%s sends no usage: %s through %s", self._up.where, how, self.kind)
        return self.kind

    async def _find(self, model: Any) -> Kind:
        data = await self._try("/tokenize", {"model": model, "prompt": _PROBE})
        if isinstance(data, dict) and isinstance(data.get("count"), int):
            return "vllm"
        data = await self._try("/tokenize", {"content": _PROBE})
        if isinstance(data, dict) and isinstance(data.get("tokens"), list) and data["tokens"]:
            return "llama.cpp"
        data = await self._try("/extras/tokenize", {"input": _PROBE})
        if isinstance(data, dict) and isinstance(data.get("tokens"), list) and data["tokens"]:
            empty = await self._try("/extras/tokenize", {"input": ""})
            tokens = empty.get("tokens") if isinstance(empty, dict) else None
            self._baseline = len(tokens) if isinstance(tokens, list) else 0
            return "llama-cpp-python"
        return "none"

    async def _prompt(self, kind: Kind, body: Mapping[str, Any]) -> int:
        chat = "messages" in body
        prompt = body.get("prompt")
        if not chat and not isinstance(prompt, str):
            return estimate_prompt(body)
        if kind == "vllm":
            req: dict[str, Any] = {"model": body.get("model")}
            if chat:
                req.update(messages=body["messages"], add_generation_prompt=True)
                if body.get("tools"):
                    req["tools"] = body["tools"]
            else:
                req["prompt"] = prompt
            return int((await self._post("/tokenize", req))["count"])
        if kind == "llama.cpp":
            if chat:
                rendered = await self._post("/apply-template", {"messages": body["messages"]})
                prompt = rendered["prompt"]
            data = await self._post("/tokenize", {"content": prompt, "add_special": True})
            return len(data["tokens"])
        if kind == "llama-cpp-python":
            if not chat:
                return len((await self._post("/extras/tokenize", {"input": prompt}))["tokens"])
            total = _REPLY
            for text in _message_text(body["messages"]):  # the text exact, the template estimated
                data = await self._post("/extras/tokenize", {"input": text})
                total += max(0, len(data["tokens"]) - self._baseline) + _PER_MESSAGE
            return total
        return estimate_prompt(body)

    async def _text(self, kind: Kind, model: Any, text: str) -> int:
        if kind == "vllm":
            req = {"model": model, "prompt": text, "add_special_tokens": False}
            return int((await self._post("/tokenize", req))["count"])
        if kind == "llama.cpp":
            data = await self._post("/tokenize", {"content": text, "add_special": False})
            return len(data["tokens"])
        if kind == "llama-cpp-python":
            data = await self._post("/extras/tokenize", {"input": text})
            return max(0, len(data["tokens"]) - self._baseline)
        return estimate(text)

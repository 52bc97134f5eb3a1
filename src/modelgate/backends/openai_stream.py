"""An OpenAI-style upstream stream -> chunks.

Every event is parsed and checked (error events, finish reasons, usage), but the
upstream's own bytes are what the client gets (``Chunk.raw``, model renamed): no
re-rendering.  Consecutive text-only events of one choice that arrived in the same
read are forwarded as one chunk holding all their bytes, so what the socket
delivered at once crosses the router and the client socket once.  Nothing ever
waits for more: a run ends with the read it came in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson

from modelgate.backends.http import HTTPClientError, body_error
from modelgate.backends.sse import EventTooLarge, SSESplitter, TruncatedEvent
from modelgate.backends.upstream_errors import error_from_event
from modelgate.errors import UpstreamDisconnected, UpstreamError
from modelgate.types import Chunk, Usage

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter"})
_CHAT_SIMPLE = frozenset({"role", "content"})


_USAGE_DETAILS = ("prompt_tokens_details", "completion_tokens_details")
REASONING_KEYS = ("reasoning", "reasoning_content")  # vLLM now / vLLM before, DeepSeek
META_KEYS = ("system_fingerprint",)


def usage_of(raw: Any) -> Usage | None:
    if type(raw) is not dict:
        return None
    details = {k: v for k in _USAGE_DETAILS if type(v := raw.get(k)) is dict}
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0), details or None)


def reasoning_of(fields: Mapping[str, Any]) -> dict[str, str] | None:
    """The reasoning text of a delta or message, by the name the upstream used."""
    found = {k: v for k in REASONING_KEYS if type(v := fields.get(k)) is str and v}
    return found or None


def meta_of(event: Mapping[str, Any]) -> dict[str, Any] | None:
    found = {k: v for k in META_KEYS if (v := event.get(k)) is not None}
    return found or None


def finish_of(value: Any) -> Any:
    """OpenAI's finish reasons as they are; any other non-empty reason is a stop."""
    return value if value in FINISH_REASONS else ("stop" if value else None)


class _Response(Protocol):
    """What the relay needs of an upstream response (``http_connection.Response``)."""

    async def readany(self) -> bytes: ...

    def close(self) -> None: ...


class _Run:
    """Text-only events of one choice, merged."""

    __slots__ = ("datas", "finish", "index", "role", "texts")

    def __init__(self, index: int, role: str | None) -> None:
        self.index = index
        self.role = role
        self.texts: list[str] = []
        self.datas: list[bytes] = []
        self.finish: Any = None


CountUsage = Callable[[list[str]], Awaitable[Usage]]


class EventStream:
    """``count``: the usage of the texts generated (one per choice), for an upstream
    that ended its stream without a usage event (``upstream_tokens.py``); the
    client then gets modelgate's count, in the same place: one event, last before
    ``[DONE]``, with ``choices: []``."""

    def __init__(
        self,
        *,
        where: str,
        chat: bool,
        n: int,
        rename: Callable[[bytes], bytes] | None,
        count: CountUsage | None = None,
    ) -> None:
        self._where = where
        self._chat = chat
        self._n = n
        self._rename = rename
        self._count = count

    async def chunks(self, open_response: Callable[[], Awaitable[_Response]]) -> AsyncIterator[Chunk]:
        """The whole relay in one generator: open the upstream response, read it
        (``readany``: whatever the socket has), parse, yield; the response is closed
        at the end, on failure and when the consumer stops early (which cancels
        the upstream request)."""
        resp = await open_response()
        finished: set[int] = set()
        split = SSESplitter()
        usage_seen = False
        texts: dict[int, list[str]] = {}  # what each choice generated, while no usage came
        head: bytes | None = None
        try:
            read = resp.readany
            while True:
                block = await read()
                datas = split.feed(block) if block else split.end()
                if datas:
                    if head is None:
                        head = datas[0]
                    out, done, error = self._read(datas)
                    for chunk in out:
                        if chunk.finish_reason is not None:
                            finished.add(chunk.index)
                        if chunk.usage is not None:
                            usage_seen = True
                        elif chunk.text or chunk.reasoning:
                            parts = texts.setdefault(chunk.index, [])
                            parts.append(chunk.text)
                            if chunk.reasoning:
                                parts.extend(chunk.reasoning.values())
                        yield chunk
                    if error is not None:
                        raise error
                    if done:
                        break
                if not block:
                    break
        except TruncatedEvent as exc:
            raise UpstreamDisconnected(f"{self._where} stream ended inside an event") from exc
        except EventTooLarge as exc:
            raise UpstreamError(f"{self._where}: {exc}") from exc
        except HTTPClientError as exc:
            raise body_error(exc, self._where) from exc
        finally:
            resp.close()
        if len(finished) < self._n:
            raise UpstreamDisconnected(f"{self._where} stream ended before a finish reason")
        if not usage_seen and self._count is not None:
            usage = await self._count(["".join(texts[i]) for i in sorted(texts)])
            yield Chunk(usage=usage, raw=self._usage_event(head, usage))

    def _usage_event(self, head: bytes | None, usage: Usage) -> bytes:
        """A usage event in the upstream's own terms (its id, created and model)."""
        try:
            first = orjson.loads(head) if head else {}
        except orjson.JSONDecodeError:
            first = {}
        if type(first) is not dict:
            first = {}
        event: dict[str, Any] = {
            "id": first.get("id") or "",
            "object": "chat.completion.chunk" if self._chat else "text_completion",
            "created": first.get("created") or 0,
            "model": first.get("model") or "",
            "choices": [],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        }
        return self._frames([orjson.dumps(event)])

    def _read(self, datas: list[bytes]) -> tuple[list[Chunk], bool, UpstreamError | None]:
        """The chunks of one socket read, whether ``[DONE]`` came in it, and the
        upstream error that ends the stream after them.  All chunks are ``buffered``
        but the last, which is too when ``[DONE]`` came in the same read.  What came
        before a failure still reaches the client.

        A one-choice, text-only event (no usage, no logprobs, a delta of role and
        content alone) joins the run of such events of its choice; the test is
        written out here, not called, because it runs for every event of a stream."""
        out: list[Chunk] = []
        run: _Run | None = None
        error: UpstreamError | None = None
        done = b"[DONE]" in datas
        if done:
            datas = datas[: datas.index(b"[DONE]")]
        events = self._parse_all(datas)
        chat = self._chat
        simple_delta = _CHAT_SIMPLE.issuperset
        for i, data in enumerate(datas):
            try:
                event = events[i] if events is not None else self._parse(data)
            except UpstreamError as exc:
                error = exc
                break
            if "error" in event:
                error = error_from_event(event, where=self._where)
                break
            # is it simple?  (index, text, role) when it is
            choices = event.get("choices")
            simple = False
            if type(choices) is list and len(choices) == 1 and event.get("usage") is None:
                c = choices[0]
                if type(c) is dict and c.get("logprobs") is None:
                    index = c.get("index") or 0
                    if chat:
                        delta = c.get("delta")
                        if type(delta) is dict and simple_delta(delta):
                            text, role = delta.get("content") or "", delta.get("role")
                            simple = type(index) is int and type(text) is str
                    else:
                        text, role = c.get("text") or "", None
                        simple = type(index) is int and type(text) is str
            if not simple:
                if run is not None:
                    out.append(self._run_chunk(run))
                    run = None
                out.extend(self._event_chunks(event, data))
                continue
            if run is not None and run.index != index:
                out.append(self._run_chunk(run))
                run = None
            if run is None:
                run = _Run(index, role)
            run.texts.append(text)
            run.datas.append(data)
            finish = c.get("finish_reason")
            if finish is not None:
                finish = finish_of(finish)
                if finish is not None:
                    run.finish = finish
                    out.append(self._run_chunk(run))
                    run = None
        # the last chunk is flushed, unless the end of the stream came in this read too
        buffered = done and error is None
        if run is not None:
            out.append(self._run_chunk(run, buffered=buffered))
        elif out and not buffered:
            out[-1] = out[-1].with_buffered(False)
        return out, done, error

    def _frames(self, datas: list[bytes]) -> bytes:
        """The events as SSE bytes (model renamed): one join, one rename."""
        raw = b"data: " + (datas[0] if len(datas) == 1 else b"\n\ndata: ".join(datas)) + b"\n\n"
        return self._rename(raw) if self._rename else raw

    def _run_chunk(self, run: _Run, buffered: bool = True) -> Chunk:
        return Chunk(
            index=run.index,
            text=run.texts[0] if len(run.texts) == 1 else "".join(run.texts),
            role=run.role,
            finish_reason=run.finish,
            buffered=buffered,
            raw=self._frames(run.datas),
        )

    def _parse_all(self, datas: list[bytes]) -> list[dict[str, Any]] | None:
        """The events of one read parsed in one call; None when they must go one by
        one (something in the read is not one JSON object per event)."""
        try:
            events = orjson.loads(b"[" + b",".join(datas) + b"]")
        except orjson.JSONDecodeError:
            return None
        if len(events) != len(datas) or list(map(type, events)).count(dict) != len(events):
            return None
        return events  # type: ignore[no-any-return]

    def _parse(self, data: bytes) -> dict[str, Any]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"{self._where} sent a malformed stream event") from exc
        if type(event) is not dict:
            raise UpstreamError(f"{self._where} sent a malformed stream event")
        return event

    def _event_chunks(self, event: Mapping[str, Any], data: bytes) -> list[Chunk]:
        """Any other event: one chunk per choice (the first carries the event's bytes),
        plus one for usage."""
        choices = event.get("choices") or ()
        usage = usage_of(event.get("usage"))
        frame = self._frames([data])
        out = []
        for pos, c in enumerate(choices):
            if type(c) is not dict:
                raise UpstreamError(f"{self._where} sent a malformed stream choice")
            delta = c.get("delta") if self._chat else c
            if type(delta) is not dict:
                delta = {}
            logprobs = c.get("logprobs")
            tool_calls = delta.get("tool_calls") if self._chat else None
            out.append(
                Chunk(
                    index=c.get("index") or 0,
                    text=(delta.get("content") if self._chat else delta.get("text")) or "",
                    role=delta.get("role") if self._chat else None,
                    finish_reason=finish_of(c.get("finish_reason")),
                    tool_calls=tuple(tool_calls) if tool_calls else (),
                    logprobs=logprobs if self._chat and type(logprobs) is dict else None,
                    buffered=True,
                    raw=frame if pos == 0 else b"",
                    reasoning=reasoning_of(delta) if self._chat else None,
                )
            )
        if usage is not None:
            out.append(Chunk(usage=usage, buffered=True, raw=b"" if choices else frame))
        return out

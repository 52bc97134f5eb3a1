"""Anthropic Messages API <-> the internal request and chunks (``tests/specs/anthropic-messages.md``).

A Messages body becomes the OpenAI chat body it means (system first, ``tool_use``
blocks as ``tool_calls`` with their ids, ``tool_result`` blocks as ``tool`` messages
before the user's text, images as data URLs), which ``convert.chat_request`` turns
into the one internal request: limits, routing, failover and the openai backend's
forwarding are the chat path's.  Answers go the other way: a body with ``text`` and
``tool_use`` blocks, or Anthropic's event stream.  Imports neither torch nor the
web framework.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from modelgate.config import LimitsConfig, ModelConfig
from modelgate.errors import InvalidRequest, ModelGateError, UpstreamError
from modelgate.types import Chunk, GenerationRequest, Usage
from modelgate.wire import convert
from modelgate.wire.render import Aggregator


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Block(_Loose):
    """A content block; which fields it needs depends on ``type`` (checked below)."""

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[dict[str, Any]] | None = None
    is_error: StrictBool | None = None
    source: dict[str, Any] | None = None


class MessageIn(_Loose):
    role: Literal["user", "assistant", "system"]  # "system": Claude Code's mid-conversation system
    content: str | list[Block]


class ToolIn(_Loose):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]
    type: str | None = None


class MessagesRequest(_Loose):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int = Field(ge=1, strict=True)
    messages: list[MessageIn] = Field(min_length=1)
    system: str | list[Block] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1, strict=True)
    top_p: float | None = Field(None, gt=0, le=1, strict=True)
    top_k: int | None = Field(None, ge=0, strict=True)
    metadata: dict[str, Any] | None = None
    stream: StrictBool | None = None
    tools: list[ToolIn] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None


class CountTokensRequest(MessagesRequest):
    max_tokens: int = Field(1, strict=True)


# hosted-only or advisory fields: accepted and dropped (the spec allows ignoring them)
IGNORED = frozenset(
    {
        "service_tier",
        "container",
        "inference_geo",
        "cache_control",
        "context_management",
        "diagnostics",
        "speed",
        "user_profile_id",
        "workspace_id",
    }
)
# block types from Anthropic's own server tools: nothing here can run them
_TEXTLESS_HISTORY = frozenset({"thinking", "redacted_thinking"})
_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


# --- request ---------------------------------------------------------------------------------


def _text(blocks: str | list[Block] | None, where: str) -> str:
    if blocks is None or isinstance(blocks, str):
        return blocks or ""
    out = []
    for b in blocks:
        if b.type != "text" or b.text is None:
            raise InvalidRequest(f"{where}: only text blocks are allowed here (got {b.type!r}).")
        out.append(b.text)
    return "\n\n".join(out) if len(out) > 1 else "".join(out)


def _image(b: Block | Mapping[str, Any], where: str) -> dict[str, Any]:
    source = (b.source if isinstance(b, Block) else b.get("source")) or {}
    kind = source.get("type")
    if kind == "base64" and source.get("media_type") and source.get("data"):
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif kind == "url" and source.get("url"):
        url = source["url"]
    else:
        raise InvalidRequest(f"{where}: an image needs a base64 or url source.")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(b: Block, where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A ``tool`` message, and the images it carried (for the next user message:
    OpenAI tool messages are text only)."""
    if not b.tool_use_id:
        raise InvalidRequest(f"{where}: a tool_result block needs 'tool_use_id'.")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(b.content, str):
        texts.append(b.content)
    for part in b.content if isinstance(b.content, list) else ():
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "image":
            images.append(_image(part, where))
        else:
            raise InvalidRequest(f"{where}: a tool_result may hold text and image blocks (got {kind!r}).")
    text = "\n".join(texts)
    if b.is_error:
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": b.tool_use_id, "content": text}, images


def _user(blocks: list[Block], where: str, pending: set[str]) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, b in enumerate(blocks):
        at = f"{where}.content.{j}"
        if b.type == "tool_result":
            msg, images = _tool_result(b, at)
            pending.discard(msg["tool_call_id"])
            tools.append(msg)
            parts.extend(images)
        elif b.type == "text":
            if not b.text:
                raise InvalidRequest(f"{at}: text content blocks must be non-empty.")
            parts.append({"type": "text", "text": b.text})
        elif b.type == "image":
            parts.append(_image(b, at))
        else:
            raise InvalidRequest(f"{at}: content blocks of type {b.type!r} are not supported here.")
    if parts and all(p["type"] == "text" for p in parts):
        return [*tools, {"role": "user", "content": "".join(p["text"] for p in parts)}]
    return [*tools, {"role": "user", "content": parts}] if parts else tools


def _assistant(blocks: list[Block], where: str) -> tuple[dict[str, Any], set[str]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, b in enumerate(blocks):
        at = f"{where}.content.{j}"
        if b.type == "text":
            texts.append(b.text or "")
        elif b.type == "tool_use":
            if not b.id or not b.name:
                raise InvalidRequest(f"{at}: a tool_use block needs 'id' and 'name'.")
            args = orjson.dumps(b.input or {}).decode()
            calls.append({"id": b.id, "type": "function", "function": {"name": b.name, "arguments": args}})
        elif b.type not in _TEXTLESS_HISTORY:  # earlier thinking is not sent back to the model
            raise InvalidRequest(f"{at}: content blocks of type {b.type!r} are not supported here.")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        msg["tool_calls"] = calls
    return msg, {c["id"] for c in calls}


def chat_messages(req: MessagesRequest) -> list[dict[str, Any]]:
    """The OpenAI chat messages a Messages request means, in its order."""
    out: list[dict[str, Any]] = []
    system = _text(req.system, "system")
    if system:
        out.append({"role": "system", "content": system})
    pending: set[str] = set()  # the last assistant turn's tool_use ids without a result yet
    for i, m in enumerate(req.messages):
        where = f"messages.{i}"
        if m.role == "system":
            out.append({"role": "system", "content": _text(m.content, where)})
            continue
        if m.role == "user" and not isinstance(m.content, str):
            out.extend(_user(m.content, where, pending))
        if pending:
            raise InvalidRequest(
                f"{where}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                + ", ".join(sorted(pending))
            )
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
        elif m.role == "assistant":
            msg, pending = _assistant(m.content, where)
            out.append(msg)
    return out


def _tools(req: MessagesRequest) -> list[dict[str, Any]]:
    out = []
    for t in req.tools or ():
        if t.type not in (None, "custom"):
            raise InvalidRequest(
                f"Tools of type {t.type!r} are Anthropic's server tools, not available here."
            )
        fn: dict[str, Any] = {"name": t.name, "parameters": t.input_schema}
        if t.description:
            fn["description"] = t.description
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Mapping[str, Any], body: dict[str, Any]) -> None:
    kind = choice.get("type")
    if kind == "tool":
        if not choice.get("name"):
            raise InvalidRequest("tool_choice of type 'tool' needs 'name'.")
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif kind in _CHOICES:
        body["tool_choice"] = _CHOICES[kind]
    else:
        raise InvalidRequest("tool_choice.type must be one of auto, any, tool, none.")
    if choice.get("disable_parallel_tool_use"):
        body["parallel_tool_calls"] = False


def chat_body(req: MessagesRequest, limits: LimitsConfig, *, stream: bool) -> dict[str, Any]:
    """The OpenAI chat completions body a Messages request means."""
    extras = set(req.model_extra or ()) - IGNORED
    if extras:
        raise InvalidRequest(f"Unsupported parameter(s): {', '.join(sorted(extras))}.")
    # "adaptive" leaves thinking to the model, and not thinking is a valid choice (Claude Code
    # sends it on every request); a thinking budget is refused
    if req.thinking is not None and req.thinking.get("type") not in ("disabled", "adaptive"):
        raise InvalidRequest(
            "Extended thinking ('thinking': enabled) is not supported by this server; "
            "omit it or send {type: adaptive} or {type: disabled}."
        )
    body: dict[str, Any] = {
        "model": req.model,
        "messages": chat_messages(req),
        # clients send the model's whole output budget; the server's limit caps it
        "max_tokens": min(req.max_tokens, limits.max_tokens),
    }
    for key in ("temperature", "top_p", "top_k"):
        value = getattr(req, key)
        if value is not None:
            body[key] = value
    if req.stop_sequences:
        body["stop"] = req.stop_sequences
    user = (req.metadata or {}).get("user_id")
    if isinstance(user, str) and user:
        body["user"] = user[:256]
    if req.tools:
        body["tools"] = _tools(req)
    if req.tool_choice is not None:
        _tool_choice(req.tool_choice, body)
    fmt = (req.output_config or {}).get("format")
    if fmt is not None:
        if (
            not isinstance(fmt, dict)
            or fmt.get("type") != "json_schema"
            or not isinstance(fmt.get("schema"), dict)
        ):
            raise InvalidRequest("output_config.format must be {type: json_schema, schema: {...}}.")
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt["schema"]},
        }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def messages_request(
    body: Any, model: ModelConfig, limits: LimitsConfig, request_id: str, *, counting: bool = False
) -> GenerationRequest:
    """A Messages body (or a count_tokens body: one token, never streamed) as the internal request."""
    req: MessagesRequest = convert.validate(CountTokensRequest if counting else MessagesRequest, body)
    chat = chat_body(req, limits, stream=bool(req.stream) and not counting)
    if counting:
        chat["max_tokens"] = 1
    return convert.chat_request(chat, model, limits, request_id)


# --- answers -----------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def _input(arguments: str) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        raise UpstreamError("The model's tool call arguments are not valid JSON.") from None
    if not isinstance(value, dict):
        raise UpstreamError("The model's tool call arguments are not a JSON object.")
    return value


def stop_reason(finish: str | None, tools_called: bool) -> str:
    if finish is None:
        return "tool_use" if tools_called else "end_turn"
    return STOP_REASONS.get(finish, "end_turn")


def usage_body(usage: Usage | None) -> dict[str, int]:
    u = usage or Usage()
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}


def message_body(chunks: Iterable[Chunk], msg_id: str, model: str) -> tuple[dict[str, Any], Usage | None]:
    """A whole answer's chunks as a Messages response body (and its usage)."""
    agg = Aggregator()
    for chunk in chunks:
        agg.add(chunk)
    choice = agg.choices.get(0)
    content: list[dict[str, Any]] = []
    finish = None
    if choice is not None:
        finish = choice.finish_reason
        text = "".join(choice.text)
        if text:
            content.append({"type": "text", "text": text})
        for k in sorted(choice.tool_calls):
            call = choice.tool_calls[k]
            fn = call["function"]
            content.append(
                {
                    "type": "tool_use",
                    "id": call["id"] or new_id("toolu_"),
                    "name": fn["name"],
                    "input": _input(fn["arguments"]),
                }
            )
    body = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish, any(b["type"] == "tool_use" for b in content)),
        "stop_sequence": None,
        "usage": usage_body(agg.usage),
    }
    return body, agg.usage


def error_event(exc: BaseException) -> bytes:
    if not isinstance(exc, ModelGateError):
        exc = ModelGateError("The server had an error while streaming.")
    _, body = exc.to_anthropic()
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"


PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
_TEXT_START = (
    b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
    b'"content_block":{"type":"text","text":""}}\n\n'
)
_TEXT_DELTA = (  # + the JSON string + b"}}\n\n"
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"text_delta","text":'
)
_JSON_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"input_json_delta","partial_json":%s}}\n\n'
)


def _frame(event: str, body: Mapping[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"


class EventRenderer:
    """One answer's chunks as Anthropic's event sequence: ``message_start``, one block
    at a time (each opened, filled and closed before the next, never on a shared
    index), ``message_delta`` with the stop reason and usage, ``message_stop``."""

    beat = PING

    __slots__ = (
        "_block",
        "_call",
        "_call_id",
        "_delta",
        "_finish",
        "_id",
        "_index",
        "_model",
        "_started",
        "_tools",
        "_usage",
    )

    def __init__(self, msg_id: str, model: str) -> None:
        self._id = msg_id
        self._model = model
        self._started = False
        self._index = -1  # the open block's index
        self._block: str | None = None  # its type
        self._call: Any = None  # the OpenAI index of the tool call in the open block
        self._call_id: str | None = None
        self._delta = b""  # the open text block's delta event up to its text
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._tools = False

    def _start(self) -> bytes:
        self._started = True
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self._model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _frame("message_start", {"type": "message_start", "message": message})

    def _open(self, kind: str, out: list[bytes], start: bytes) -> None:
        if self._block is not None:
            out.append(_STOP % self._index)
        self._index += 1
        self._block = kind
        out.append(start)

    def event(self, chunk: Chunk) -> bytes | None:
        # the common case, a piece of text in the open text block: one concatenation
        if (
            self._block == "text"
            and chunk.index == 0
            and chunk.usage is None
            and chunk.finish_reason is None
            and not chunk.tool_calls
        ):
            return self._delta + orjson.dumps(chunk.text) + b"}}\n\n" if chunk.text else None
        return self._event(chunk)

    def _event(self, chunk: Chunk) -> bytes | None:
        out: list[bytes] = [] if self._started else [self._start()]
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.index != 0:
            return b"".join(out) or None
        if chunk.text:
            if self._block != "text":
                self._open("text", out, _TEXT_START % (self._index + 1))
                self._delta = _TEXT_DELTA % self._index
            out.append(self._delta + orjson.dumps(chunk.text) + b"}}\n\n")
        for pos, delta in enumerate(chunk.tool_calls):
            self._tool_delta(delta, pos, out)
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
        return b"".join(out) or None

    def _tool_delta(self, delta: Mapping[str, Any], pos: int, out: list[bytes]) -> None:
        call = delta.get("index", pos)
        fn = delta.get("function") or {}
        new_id_ = delta.get("id")
        if self._block != "tool_use" or call != self._call or (new_id_ and new_id_ != self._call_id):
            self._tools = True
            self._call = call
            self._call_id = new_id_ or new_id("toolu_")
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": self._call_id,
                "name": fn.get("name") or "",
                "input": {},
            }
            start = {"type": "content_block_start", "index": self._index + 1, "content_block": block}
            self._open("tool_use", out, _frame("content_block_start", start))
        args = fn.get("arguments")
        if args:  # the first piece may come with the id and name: never dropped, never empty
            out.append(_JSON_DELTA % (self._index, orjson.dumps(args)))

    def end(self) -> bytes:
        out: list[bytes] = [] if self._started else [self._start()]
        if self._block is not None:
            out.append(_STOP % self._index)
            self._block = None
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(self._finish, self._tools), "stop_sequence": None},
            "usage": usage_body(self._usage),
        }
        out.append(_frame("message_delta", delta))
        out.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
        return b"".join(out)

    @property
    def usage(self) -> Usage | None:
        return self._usage

    def error(self, exc: BaseException) -> bytes:
        return error_event(exc)


# --- models ------------------------------------------------------------------------------


def models_body(ids: list[str], created: float) -> dict[str, Any]:
    """``GET /v1/models`` as the Anthropic SDK's ``models.list()`` reads it (one page)."""
    data = [model_info(i, created) for i in ids]
    return {
        "data": data,
        "has_more": False,
        "first_id": ids[0] if ids else None,
        "last_id": ids[-1] if ids else None,
    }


def model_info(model_id: str, created: float) -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": stamp}

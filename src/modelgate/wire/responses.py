"""OpenAI Responses API (stateless) <-> the internal request and chunks.

A ``POST /v1/responses`` body becomes the chat completions body it means
(``instructions`` first, ``function_call`` items as an assistant's ``tool_calls``,
``function_call_output`` items as ``tool`` messages, ``text.format`` as
``response_format``), which ``convert.chat_request`` turns into the one internal
request.  Answers go back as a ``response`` object with ``message`` and
``function_call`` output items, or as the semantic event stream, every event with its
``sequence_number``.  Nothing is stored: ``store: true`` and ``previous_response_id``
are refused.  Imports neither torch nor the web framework.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from modelgate.config import LimitsConfig, ModelConfig
from modelgate.errors import InvalidRequest, ModelGateError
from modelgate.types import Chunk, GenerationRequest, Usage
from modelgate.wire import convert
from modelgate.wire.render import Aggregator


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    model: str = Field(min_length=1, max_length=256)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(None, ge=1, strict=True)
    temperature: float | None = Field(None, ge=0, le=2, strict=True)
    top_p: float | None = Field(None, gt=0, le=1, strict=True)
    stream: StrictBool | None = None
    store: StrictBool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = Field(None, max_length=256)


# accepted, no effect on generation here (echoed where the response object has them)
IGNORED = frozenset(
    {
        "include",
        "truncation",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        "stream_options",
        "client_metadata",  # Codex's
    }
)
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def _refuse(req: ResponsesRequest) -> None:
    if req.store:
        raise InvalidRequest(
            "store: true is not supported: this server keeps no responses (send store: false).", param="store"
        )
    if req.previous_response_id:
        raise InvalidRequest(
            "previous_response_id is not supported: this server keeps no responses; send the whole "
            "conversation in 'input'.",
            param="previous_response_id",
        )
    if req.reasoning and req.reasoning.get("effort") is not None:
        raise InvalidRequest("reasoning.effort is not supported by this server.", param="reasoning")
    extras = set(req.model_extra or ()) - IGNORED
    for key in sorted(extras):
        value = (req.model_extra or {})[key]
        if value not in (None, False, [], {}):
            raise InvalidRequest(f"Parameter '{key}' is not supported by this server.", param=key)


def _part(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text") or "")}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image: dict[str, Any] = {"url": part["image_url"]}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise InvalidRequest(f"{where}: content of type {kind!r} is not supported here.", param=where)


def _message(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    role = _ROLES.get(str(item.get("role")))
    if role is None:
        raise InvalidRequest(
            f"{where}.role must be user, assistant, system or developer.", param=f"{where}.role"
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list.", param=f"{where}.content")
    parts = [
        _part(p if isinstance(p, Mapping) else {}, f"{where}.content.{j}") for j, p in enumerate(content)
    ]
    if all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def chat_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.instructions:
        out.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        out.append({"role": "user", "content": req.input})
        return out
    for i, item in enumerate(req.input):
        where = f"input.{i}"
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            if not item.get("call_id") or not item.get("name"):
                raise InvalidRequest(f"{where}: a function_call needs 'call_id' and 'name'.", param=where)
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": str(item.get("arguments") or "{}")},
            }
            last = out[-1] if out else None
            if (
                last is not None
                and last["role"] == "assistant"
                and isinstance(last.get("content"), str | None)
            ):
                last.setdefault("tool_calls", []).append(call)  # one assistant turn, many calls
                if not last.get("content"):
                    last["content"] = None
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not item.get("call_id"):
                raise InvalidRequest(f"{where}: a function_call_output needs 'call_id'.", param=where)
            output = item.get("output")
            if isinstance(output, list):
                output = "".join(str(p.get("text") or "") for p in output if isinstance(p, Mapping))
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": str(output or "")})
        elif kind == "reasoning":
            continue  # earlier reasoning is not sent back to the model
        else:
            raise InvalidRequest(
                f"{where}: input items of type {kind!r} are not supported here.", param=where
            )
    return out


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Function tools; OpenAI's hosted tools (``web_search``, ``file_search``...) and
    ``namespace`` groups are offers nothing here can honour: not offered to the model
    (Codex sends them on every request).  Forcing one with ``tool_choice`` is a 400."""
    out = []
    for i, t in enumerate(tools):
        if t.get("type") != "function":
            continue
        if not t.get("name"):
            raise InvalidRequest(f"tools.{i}: a function tool needs 'name'.", param=f"tools.{i}")
        fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: str | Mapping[str, Any]) -> Any:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InvalidRequest(
                "tool_choice must be auto, none, required or a function.", param="tool_choice"
            )
        return choice
    if choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest("tool_choice: only {type: function, name} is supported.", param="tool_choice")


def _format(text: Mapping[str, Any]) -> dict[str, Any] | None:
    fmt = text.get("format")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        schema.setdefault("name", "output")
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest(
        "text.format must be text, json_object or json_schema with a schema.", param="text.format"
    )


def chat_body(req: ResponsesRequest, limits: LimitsConfig | None = None) -> dict[str, Any]:
    _refuse(req)
    body: dict[str, Any] = {"model": req.model, "messages": chat_messages(req)}
    if req.max_output_tokens is not None:  # an upper bound: capped at the server's limit
        cap = limits.max_tokens if limits is not None else req.max_output_tokens
        body["max_tokens"] = min(req.max_output_tokens, cap)
    for key in ("temperature", "top_p", "user", "parallel_tool_calls"):
        value = getattr(req, key)
        if value is not None:
            body[key] = value
    if req.tools:
        body["tools"] = _tools(req.tools)
    if req.tool_choice is not None:
        body["tool_choice"] = _tool_choice(req.tool_choice)
    fmt = _format(req.text or {})
    if fmt is not None:
        body["response_format"] = fmt
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def responses_request(
    body: Any, model: ModelConfig, limits: LimitsConfig, request_id: str
) -> tuple[GenerationRequest, ResponsesRequest]:
    req: ResponsesRequest = convert.validate(ResponsesRequest, body)
    return convert.chat_request(chat_body(req, limits), model, limits, request_id), req


# --- answers -----------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def usage_body(u: Usage | None) -> dict[str, Any]:
    u = u or Usage()
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.total_tokens,
    }


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class Envelope:
    """The ``response`` object around the output: what the request asked for, echoed."""

    __slots__ = ("created", "id", "model", "req")

    def __init__(self, resp_id: str, model: str, req: ResponsesRequest) -> None:
        self.id = resp_id
        self.model = model
        self.req = req
        self.created = int(time.time())

    def body(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None,
        finish: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        r = self.req
        reason = _INCOMPLETE.get(finish or "")
        if reason is not None and status == "completed":
            status = "incomplete"
        body = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": reason} if status == "incomplete" else None,
            "instructions": r.instructions,
            "max_output_tokens": r.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": r.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": r.temperature,
            "text": {"format": (r.text or {}).get("format") or {"type": "text"}},
            "tool_choice": r.tool_choice if r.tool_choice is not None else "auto",
            "tools": [{"strict": None, **t} for t in r.tools or ()],
            "top_p": r.top_p,
            "truncation": "disabled",
            "metadata": r.metadata or {},
        }
        if status != "in_progress":
            body["usage"] = usage_body(usage)
        if r.user is not None:
            body["user"] = r.user
        return body


def _text_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = (
        [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        if status != "in_progress"
        else []
    )
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def response_body(chunks: Iterable[Chunk], env: Envelope) -> tuple[dict[str, Any], Usage | None]:
    agg = Aggregator()
    for chunk in chunks:
        agg.add(chunk)
    output: list[dict[str, Any]] = []
    choice = agg.choices.get(0)
    finish = None
    if choice is not None:
        finish = choice.finish_reason
        text = "".join(choice.text)
        if text:
            output.append(_text_item(new_id("msg_"), text, "completed"))
        for k in sorted(choice.tool_calls):
            call = choice.tool_calls[k]
            fn = call["function"]
            output.append(
                _call_item(
                    new_id("fc_"), call["id"] or new_id("call_"), fn["name"], fn["arguments"], "completed"
                )
            )
    return env.body("completed", output, agg.usage, finish), agg.usage


def _frame(body: dict[str, Any]) -> bytes:
    return b"event: " + body["type"].encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"


class EventRenderer:
    """One answer as the Responses API's semantic events, numbered: ``response.created``,
    ``response.in_progress``, per output item ``output_item.added`` … ``output_item.done``
    (text: ``content_part.added``, ``output_text.delta``…, ``output_text.done``,
    ``content_part.done``; a call: ``function_call_arguments.delta``…, ``.done``), then
    ``response.completed`` or ``response.incomplete``; after a failure ``error`` and
    ``response.failed``."""

    beat = b": keep-alive\n\n"

    __slots__ = (
        "_call",
        "_delta",
        "_env",
        "_finish",
        "_item",
        "_output",
        "_seq",
        "_started",
        "_texts",
        "_usage",
    )

    def __init__(self, env: Envelope) -> None:
        self._env = env
        self._seq = 0
        self._started = False
        self._output: list[dict[str, Any]] = []  # finished items
        self._item: dict[str, Any] | None = None  # the open item (with its accumulated text/arguments)
        self._call: Any = None
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._delta = b""  # the open message's text delta event up to its text
        self._texts: list[str] | None = None  # the open message's text so far

    def _emit(self, out: list[bytes], body: dict[str, Any]) -> None:
        body["sequence_number"] = self._seq
        self._seq += 1
        out.append(_frame(body))

    def _start(self, out: list[bytes]) -> None:
        self._started = True
        for kind in ("response.created", "response.in_progress"):
            self._emit(out, {"type": kind, "response": self._env.body("in_progress", [], None)})

    def _close(self, out: list[bytes]) -> None:
        item = self._item
        if item is None:
            return
        self._item = None
        self._texts = None
        index = len(self._output)
        if item["type"] == "message":
            text = item.pop("_text")
            done = _text_item(item["id"], "".join(text), "completed")
            part = done["content"][0]
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            self._emit(
                out, {"type": "response.output_text.done", **common, "text": part["text"], "logprobs": []}
            )
            self._emit(out, {"type": "response.content_part.done", **common, "part": part})
        else:
            args = "".join(item.pop("_args"))
            done = _call_item(item["id"], item["call_id"], item["name"], args, "completed")
            self._emit(
                out,
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item["id"],
                    "output_index": index,
                    "name": item["name"],
                    "arguments": args,
                },
            )
        self._emit(out, {"type": "response.output_item.done", "output_index": index, "item": done})
        self._output.append(done)

    def event(self, chunk: Chunk) -> bytes | None:
        # the common case, a piece of text in the open message: one concatenation
        texts = self._texts
        if (
            texts is not None
            and chunk.index == 0
            and chunk.usage is None
            and chunk.finish_reason is None
            and not chunk.tool_calls
        ):
            if not chunk.text:
                return None
            texts.append(chunk.text)
            seq = self._seq
            self._seq = seq + 1
            return self._delta + orjson.dumps(chunk.text) + b',"sequence_number":%d}\n\n' % seq
        return self._event(chunk)

    def _event(self, chunk: Chunk) -> bytes | None:
        out: list[bytes] = []
        if not self._started:
            self._start(out)
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.index != 0:
            return b"".join(out) or None
        if chunk.text:
            self._text(chunk.text, out)
        for pos, delta in enumerate(chunk.tool_calls):
            self._tool_delta(delta, pos, out)
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
        return b"".join(out) or None

    def _text(self, text: str, out: list[bytes]) -> None:
        item = self._item
        index = len(self._output)
        if item is None or item["type"] != "message":
            self._close(out)
            index = len(self._output)
            item = self._item = {**_text_item(new_id("msg_"), "", "in_progress"), "_text": []}
            added = {k: v for k, v in item.items() if k != "_text"}
            self._emit(out, {"type": "response.output_item.added", "output_index": index, "item": added})
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            self._emit(
                out,
                {
                    "type": "response.content_part.added",
                    "item_id": item["id"],
                    "output_index": index,
                    "content_index": 0,
                    "part": part,
                },
            )
        self._texts = item["_text"]
        self._delta = (
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":'
            + orjson.dumps(item["id"])
            + b',"output_index":%d,"content_index":0,"logprobs":[],"delta":' % index
        )
        self._texts.append(text)
        seq = self._seq
        self._seq = seq + 1
        out.append(self._delta + orjson.dumps(text) + b',"sequence_number":%d}\n\n' % seq)

    def _tool_delta(self, delta: Mapping[str, Any], pos: int, out: list[bytes]) -> None:
        call = delta.get("index", pos)
        fn = delta.get("function") or {}
        item = self._item
        call_id = delta.get("id")
        if (
            item is None
            or item["type"] != "function_call"
            or call != self._call
            or (call_id and call_id != item["call_id"])
        ):
            self._close(out)
            self._call = call
            item = self._item = {
                **_call_item(
                    new_id("fc_"), call_id or new_id("call_"), fn.get("name") or "", "", "in_progress"
                ),
                "_args": [],
            }
            added = {k: v for k, v in item.items() if k != "_args"}
            self._emit(
                out, {"type": "response.output_item.added", "output_index": len(self._output), "item": added}
            )
        args = fn.get("arguments")
        if args:
            item["_args"].append(args)
            self._emit(
                out,
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item["id"],
                    "output_index": len(self._output),
                    "delta": args,
                },
            )

    def end(self) -> bytes:
        out: list[bytes] = []
        if not self._started:
            self._start(out)
        self._close(out)
        body = self._env.body("completed", self._output, self._usage, self._finish)
        kind = "response.completed" if body["status"] == "completed" else "response.incomplete"
        self._emit(out, {"type": kind, "response": body})
        return b"".join(out)

    def error(self, exc: BaseException) -> bytes:
        if not isinstance(exc, ModelGateError):
            exc = ModelGateError("The server had an error while streaming.")
        out: list[bytes] = []
        self._emit(out, {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param})
        error = {"code": "server_error", "message": exc.message}
        self._emit(
            out,
            {
                "type": "response.failed",
                "response": self._env.body("failed", self._output, self._usage, error=error),
            },
        )
        return b"".join(out)

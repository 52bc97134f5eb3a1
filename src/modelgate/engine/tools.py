"""Tool calling on the local engine: the request's tools into the chat template, the
model's calls out of its text (whole and streamed), and the grammar that forces a call.

A model writes its calls in its own format; a ``ToolFormat`` knows one of them:

- ``hermes`` (Qwen2.5, Hermes, the demo model): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
  one block per call;
- ``llama3_json`` (Llama 3.1/3.2/3.3): ``{"name": ..., "parameters": {...}}``, calls joined by ``; ``,
  the whole output being the calls (``<|python_tag|>`` in front, a special token, is dropped by
  decoding);
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``.

The format comes from the model's config (``tool_parser``) or is picked from its chat
template (``pick_format``).  ``tool_choice`` ``required`` or a named function is
enforced by a grammar (``call_grammar``): the output is one (or, with
``parallel_tool_calls``, one or more) call of a declared tool whose arguments match
that tool's ``parameters`` schema.  Arguments are handed to the client re-serialized
as compact JSON, so they always parse.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

from modelgate.errors import InvalidRequest
from modelgate.types import ChatMessage, Chunk

FormatName = Literal["hermes", "llama3_json", "mistral"]
FORMATS: tuple[FormatName, ...] = ("hermes", "llama3_json", "mistral")


@dataclass(frozen=True, slots=True)
class ToolFormat:
    name: FormatName
    start: str  # what opens the calls ("" : the output is the calls when it starts with "{")
    end: str  # what closes one call ("" : the end of the output)
    args_key: str  # "arguments" or "parameters"

    def grammar(self, call_ebnf: str, parallel: bool) -> str:
        """EBNF: the calls as this format writes them, ``tool_json`` being one call's JSON."""
        if self.name == "hermes":
            one = '"<tool_call>\\n" tool_json "\\n</tool_call>"'
            root = f'root ::= {one} ("\\n" {one})*' if parallel else f"root ::= {one}"
        elif self.name == "mistral":
            root = 'root ::= "[TOOL_CALLS][" tool_json ' + ('(", " tool_json)* "]"' if parallel else '"]"')
        else:
            root = 'root ::= tool_json ("; " tool_json)*' if parallel else "root ::= tool_json"
        return call_ebnf + "\n" + root + "\n"

    def parser(self) -> ToolCallParser:
        return ToolCallParser(self)


HERMES = ToolFormat("hermes", "<tool_call>", "</tool_call>", "arguments")
LLAMA3 = ToolFormat("llama3_json", "", "", "parameters")
MISTRAL = ToolFormat("mistral", "[TOOL_CALLS]", "", "arguments")
# a call's JSON alone, ``{"name", "arguments"}`` (forced by a JSON-schema grammar: TGI's)
BARE_CALL = ToolFormat("llama3_json", "", "", "arguments")
_BY_NAME: dict[str, ToolFormat] = {f.name: f for f in (HERMES, LLAMA3, MISTRAL)}


def pick_format(template: str | None, configured: str | None = None) -> ToolFormat:
    """The configured format, else the one the chat template writes, else Hermes."""
    if configured:
        return _BY_NAME[configured]
    t = template or ""
    if "[TOOL_CALLS]" in t:
        return MISTRAL
    if "<tool_call>" in t:
        return HERMES
    if "<|python_tag|>" in t or "ipython" in t:
        return LLAMA3
    return HERMES


# -- the request ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What a request asks of tools: the declared functions, the forced ones (None: not
    forced) and whether several calls may come at once."""

    tools: tuple[Mapping[str, Any], ...]
    forced: tuple[str, ...] | None
    parallel: bool
    parse: bool  # look for calls in the output (not with tool_choice "none")


def _function(tool: Any, i: int) -> Mapping[str, Any]:
    if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
        raise InvalidRequest(f"tools[{i}] must be a function tool.", param="tools")
    fn = tool.get("function")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise InvalidRequest(f"tools[{i}].function.name is required.", param="tools")
    params = fn.get("parameters", {"type": "object"})
    if not isinstance(params, Mapping):
        raise InvalidRequest(f"tools[{i}].function.parameters must be a JSON schema object.", param="tools")
    return fn


def plan_tools(
    tools: Sequence[Mapping[str, Any]], tool_choice: Any, parallel: bool | None
) -> ToolPlan | None:
    """The request's tools and tool_choice, checked (InvalidRequest naming the param)."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise InvalidRequest("tool_choice needs tools.", param="tool_choice")
        return None
    names = [str(_function(t, i)["name"]) for i, t in enumerate(tools)]
    forced: tuple[str, ...] | None = None
    if tool_choice in (None, "auto", "none"):
        pass
    elif tool_choice == "required":
        forced = tuple(names)
    elif isinstance(tool_choice, Mapping) and tool_choice.get("type") == "function":
        fn = tool_choice.get("function") or {}
        name = fn.get("name") if isinstance(fn, Mapping) else None
        name = name or tool_choice.get("name")  # the Responses API's shape
        if name not in names:
            raise InvalidRequest(
                f"tool_choice names {name!r}, which is not among the tools.", param="tool_choice"
            )
        forced = (str(name),)
    else:
        raise InvalidRequest(
            "tool_choice must be none, auto, required or {type: function, function: {name}}.",
            param="tool_choice",
        )
    return ToolPlan(tuple(tools), forced, parallel is not False, tool_choice != "none")


def call_schema(plan: ToolPlan, fmt: ToolFormat) -> dict[str, Any]:
    """The JSON schema of one call of a forced tool."""
    branches = []
    for tool in plan.tools:
        fn = tool["function"]
        if plan.forced is None or fn["name"] not in plan.forced:
            continue
        params = dict(fn.get("parameters") or {"type": "object"})
        branches.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, fmt.args_key: params},
                "required": ["name", fmt.args_key],
                "additionalProperties": False,
            }
        )
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def call_grammar(plan: ToolPlan, fmt: ToolFormat) -> str:
    """EBNF for forced calls (needs xgrammar; blocking: run it off the event loop)."""
    import xgrammar as xgr

    schema = json.dumps(call_schema(plan, fmt), separators=(",", ":"))
    try:
        one = xgr.Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=True)
    except Exception as exc:
        from modelgate.engine.grammar import compile_reason

        reason = compile_reason(exc)
        raise InvalidRequest(
            f"a tool's parameters cannot be used for constrained decoding: {reason}", param="tools"
        ) from None
    ebnf = re.sub(r"^root ::=", "tool_json ::=", str(one), count=1, flags=re.MULTILINE)
    return fmt.grammar(ebnf, plan.parallel)


# -- the history ----------------------------------------------------------------------------


def template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as chat templates take them: an assistant's calls with their arguments as
    objects (Qwen2.5 and Llama templates ``tojson`` them), tool results with their id."""
    out: list[dict[str, Any]] = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.content or ""}
        if m.name:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = [_call_for_template(c) for c in m.tool_calls]
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def _call_for_template(call: Mapping[str, Any]) -> dict[str, Any]:
    fn = dict(call.get("function") or {})
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            fn["arguments"] = json.loads(args) if args.strip() else {}
        except ValueError:
            pass  # left as the client sent it
    return {"id": call.get("id", ""), "type": "function", "function": fn}


# -- the output -------------------------------------------------------------------------------


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass(slots=True)
class ToolCallParser:
    """Splits one choice's streamed text into content and tool-call deltas, in OpenAI's
    chunk shape: per call, first ``{index, id, type, function: {name, arguments: ""}}``,
    then ``{index, function: {arguments}}`` fragments.  In a tagged call written name
    first (Qwen2.5's ``{"name": ..., "arguments": ...``) the name goes out as soon as it
    is known and the arguments as they come (control characters inside strings escaped,
    so they always parse); other calls are handed on once complete, as compact JSON."""

    fmt: ToolFormat
    calls: int = 0
    _buf: str = ""
    _inside: bool = False
    _started: bool = False  # for formats whose output is the calls: decided at the first text
    _whole: bool = False
    _deltas: list[dict[str, Any]] = field(default_factory=list)
    _args_at: int = -1  # in a call being streamed: where its arguments start in _buf
    _args_sent: int = 0  # how many of their characters went out
    _escaper: _Escaper | None = None

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """The content to show now and the tool-call deltas complete now."""
        self._buf += text
        if not self.fmt.end:
            return self._feed_whole()
        content: list[str] = []
        while True:
            if not self._inside:
                at = self._buf.find(self.fmt.start)
                if at < 0:
                    keep = _partial_suffix(self._buf, self.fmt.start)
                    content.append(self._content(self._buf[: len(self._buf) - keep]))
                    self._buf = self._buf[len(self._buf) - keep :]
                    break
                content.append(self._content(self._buf[:at]))
                self._buf, self._inside = self._buf[at + len(self.fmt.start) :], True
            else:
                at = self._buf.find(self.fmt.end)
                if at < 0:
                    self._stream_args()
                    break
                body, self._buf, self._inside = self._buf[:at], self._buf[at + len(self.fmt.end) :], False
                if self._args_at >= 0:
                    self._close_args(body)
                elif not self._add(body):
                    content.append(self.fmt.start + body + self.fmt.end)
        return "".join(content), self._take()

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """What is left at the end of the output (an unclosed call is parsed if it can be)."""
        rest, self._buf = self._buf, ""
        if self._whole:
            body = rest.lstrip()
            body = body[len(self.fmt.start) :] if body.startswith(self.fmt.start) else body
            return ("", self._take()) if self._add(body) else (rest, [])
        if not self.fmt.end:  # undecided (only blanks or part of the marker came)
            return rest, []
        if self._inside:
            self._inside = False
            if self._args_at >= 0:  # cut short (max_tokens): what came of its arguments stays
                self._close_args(rest)
                return "", self._take()
            return ("", self._take()) if self._add(rest) else (self.fmt.start + rest, [])
        return self._content(rest), []

    def _feed_whole(self) -> tuple[str, list[dict[str, Any]]]:
        if not self._started:
            head = self._buf.lstrip()
            if not head:
                return "", []
            if (
                self.fmt.start
                and self.fmt.start.startswith(head[: len(self.fmt.start)])
                and len(head) < len(self.fmt.start)
            ):
                return "", []  # maybe the start marker, not yet whole
            self._started = True
            self._whole = head.startswith(self.fmt.start) if self.fmt.start else head.startswith("{")
        if self._whole:
            return "", []
        out, self._buf = self._buf, ""
        return out, []

    def _stream_args(self) -> None:
        """Inside a tagged call: its head once the name is known, then the arguments
        that are certain (not what may be the call's closing ``}`` or the end tag)."""
        if self._args_at < 0:
            m = _NAME_FIRST.match(self._buf)
            if m is None:
                return
            self._head(json.loads('"' + m.group(1) + '"'))
            self._args_at, self._args_sent, self._escaper = m.end(), 0, _Escaper()
        args = self._buf[self._args_at :]
        hold = _partial_suffix(args, self.fmt.end)
        certain = args[: len(args) - hold].rstrip()
        if certain.endswith("}"):
            certain = certain[:-1]  # maybe the call's own closing brace
        self._send_args(certain)

    def _close_args(self, body: str) -> None:
        args = body[self._args_at :].rstrip()
        self._send_args(args[:-1].rstrip() if args.endswith("}") else args)
        self._args_at, self._escaper = -1, None

    def _send_args(self, certain: str) -> None:
        if len(certain) > self._args_sent and self._escaper is not None:
            piece = self._escaper.escape(certain[self._args_sent :])
            self._args_sent = len(certain)
            self._deltas.append({"index": self.calls - 1, "function": {"arguments": piece}})

    def _head(self, name: str) -> None:
        self._deltas.append(
            {
                "index": self.calls,
                "id": new_call_id(),
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
        )
        self.calls += 1

    def _content(self, text: str) -> str:
        # between and after calls, blank lines are the format's, not content
        return "" if self.calls and not text.strip() else text

    def _add(self, body: str) -> bool:
        calls = _parse_calls(body, self.fmt)
        if calls is None:
            return False
        for name, args in calls:
            index = self.calls
            self.calls += 1
            head = {
                "index": index,
                "id": new_call_id(),
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            self._deltas += [head, {"index": index, "function": {"arguments": args}}]
        return True

    def _take(self) -> list[dict[str, Any]]:
        out, self._deltas = self._deltas, []
        return out


# a tagged call's opening, name first: ``{"name": "...", "arguments": `` (Qwen2.5, the demo model)
_NAME_FIRST = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


class _Escaper:
    """Control characters inside JSON strings as ``\\uXXXX`` (raw, JSON forbids them),
    across fragments."""

    __slots__ = ("_escaped", "_in_string")

    def __init__(self) -> None:
        self._in_string = False
        self._escaped = False

    def escape(self, text: str) -> str:
        out = []
        for ch in text:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
                elif ch < " ":
                    ch = f"\\u{ord(ch):04x}"
            elif ch == '"':
                self._in_string = True
            out.append(ch)
        return "".join(out)


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that begins ``marker``."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def _parse_calls(body: str, fmt: ToolFormat) -> list[tuple[str, str]] | None:
    """(name, arguments as compact JSON) per call in ``body``; None if it is not calls."""
    text = body.strip()
    if not text:
        return None
    decoder = json.JSONDecoder(strict=False)
    items: list[Any] = []
    try:
        if fmt.name == "mistral":
            value = decoder.decode(text)
            items = value if isinstance(value, list) else [value]
        elif fmt.name == "llama3_json":
            pos = 0
            while pos < len(text):
                value, pos = decoder.raw_decode(text, pos)
                items.append(value)
                while pos < len(text) and text[pos] in " \n\t;":
                    pos += 1
        else:
            items = [decoder.decode(text)]
    except ValueError:
        return None
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        args = item.get(fmt.args_key, item.get("arguments", item.get("parameters", {})))
        out.append(
            (
                item["name"],
                args
                if isinstance(args, str)
                else json.dumps(args, ensure_ascii=False, separators=(",", ":")),
            )
        )
    return out


async def with_tool_calls(chunks: AsyncIterator[Chunk], parser: ToolCallParser) -> AsyncIterator[Chunk]:
    """A backend's chunks of one choice with tool calls parsed out of the text: content,
    each call's deltas, the finish (``tool_calls`` when calls were made); usage as is."""
    async with aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            if not chunk.text and chunk.finish_reason is None:
                if chunk.usage is not None or chunk.role is not None:
                    yield chunk
                continue
            text, deltas = parser.feed(chunk.text)
            finish = chunk.finish_reason
            if finish is not None:
                rest, more = parser.finish()
                text, deltas = text + rest, deltas + more
                if finish == "stop" and parser.calls:
                    finish = "tool_calls"
            if text:
                yield Chunk(index=chunk.index, text=text, role=chunk.role)
            for d in deltas:
                yield Chunk(index=chunk.index, tool_calls=(d,))
            if finish is not None:
                yield Chunk(index=chunk.index, finish_reason=finish, usage=chunk.usage)

"""Chat templates and token counts for upstreams that take raw text (TGI ``/generate``).

The template comes from a tokenizer directory (``tokenizer_config.json``'s
``chat_template``, or ``chat_template.jinja`` as transformers 5 writes it) and is
rendered in jinja2's immutable sandbox with the helpers Hugging Face templates
use (``raise_exception``, ``strftime_now``, ``tojson``).  Token counts come from
``tokenizer.json`` through ``tokenizers``.  No torch, no transformers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modelgate.errors import ConfigError, InvalidRequest
from modelgate.types import ChatMessage


class TemplateRaised(Exception):
    """A template called ``raise_exception`` (the conversation breaks its rules)."""


def _raise(message: str) -> None:
    raise TemplateRaised(message)


def _tojson(
    value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False
) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _token_text(value: Any) -> str:
    if isinstance(value, Mapping):  # AddedToken as serialized
        return str(value.get("content") or "")
    return str(value or "")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def message_dict(msg: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.role, "content": msg.content or ""}
    if msg.name:
        out["name"] = msg.name
    if msg.tool_calls:
        out["tool_calls"] = [dict(c) for c in msg.tool_calls]
    if msg.tool_call_id:
        out["tool_call_id"] = msg.tool_call_id
    return out


class ChatTemplate:
    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source  # what says how the model writes tool calls (engine/tools.py)
        try:
            self._template = _environment().from_string(source)
        except TemplateError as exc:
            raise ConfigError(f"the chat template does not compile: {exc}") from exc
        self._bos = bos_token
        self._eos = eos_token

    @classmethod
    def from_dir(cls, directory: str | Path) -> ChatTemplate | None:
        """The template in a tokenizer directory, or None when it has none."""
        d = Path(directory)
        cfg: dict[str, Any] = {}
        if (d / "tokenizer_config.json").is_file():
            cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
        source = cfg.get("chat_template")
        if isinstance(source, list):  # named templates: take "default"
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, Mapping)}
            source = named.get("default") or next(iter(named.values()), None)
        if source is None and (d / "chat_template.jinja").is_file():
            source = (d / "chat_template.jinja").read_text(encoding="utf-8")
        if source is None and (d / "chat_template.json").is_file():
            source = json.loads((d / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
        if not isinstance(source, str):
            return None
        return cls(
            source, bos_token=_token_text(cfg.get("bos_token")), eos_token=_token_text(cfg.get("eos_token"))
        )

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[Mapping[str, Any]] = (),
        add_generation_prompt: bool = True,
    ) -> str:
        try:
            return self._template.render(
                messages=[message_dict(m) for m in messages],
                tools=[dict(t) for t in tools] or None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except TemplateRaised as exc:
            raise InvalidRequest(
                f"the model's chat template refused the conversation: {exc}", param="messages"
            ) from exc
        except TemplateError as exc:
            raise InvalidRequest(f"the model's chat template failed: {exc}", param="messages") from exc


class TokenCounter:
    """Counts tokens with the model's ``tokenizer.json`` (loading it is blocking work)."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))

    @classmethod
    def from_dir(cls, directory: str | Path) -> TokenCounter | None:
        path = Path(directory) / "tokenizer.json"
        return cls(path) if path.is_file() else None

    def count(self, text: str, limit: int | None = None) -> int:
        """The tokens in ``text``; past ``limit`` (when given) the count may stop
        early and is then only known to exceed it (``count_up_to``)."""
        if limit is not None:
            return count_up_to(self._tok, text, limit)
        return len(self._tok.encode_batch([text], add_special_tokens=False)[0])


SEGMENT_CHARS = 32768


def _segments(text: str, size: int) -> list[str]:
    """``text`` in pieces of about ``size`` characters, cut before a space that
    follows a non-space where there is one (no word-level token spans such a cut)."""
    out = []
    start, n = 0, len(text)
    while n - start > size:
        end = start + size
        cut = text.rfind(" ", start + size // 2, end)
        if cut <= start or text[cut - 1].isspace():
            cut = end
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def count_up_to(tokenizer: Any, text: str, limit: int, *, exact: bool = True) -> int:
    """How many tokens ``text`` is, for a ``tokenizers.Tokenizer``, in a way that
    never stalls an event loop in another thread for long, however long the text.

    A tokenizer lets go of the GIL while it encodes (``encode_batch``, not
    ``encode``), but freeing the result holds it: 0.4 s for a 1.9 MB prompt's 1.3
    million tokens.  So a long text is counted in pieces of ``SEGMENT_CHARS`` (each
    freed in a few ms) and the count stops as soon as it is clearly over ``limit``
    (by more than the few tokens a cut may add); a text that turns out not to be
    over it is counted whole, exactly (it is at most about ``limit`` tokens), or,
    with ``exact=False``, the sum of the pieces' counts is returned as it is."""

    def one(piece: str) -> int:
        return len(tokenizer.encode_batch([piece], add_special_tokens=False)[0])

    if len(text) <= SEGMENT_CHARS:
        return one(text)
    total = 0
    pieces = _segments(text, SEGMENT_CHARS)
    margin = 4 * len(pieces)  # a cut may add a token or two (a prefix space, a split word)
    for piece in pieces:
        total += one(piece)
        if total > limit + margin:
            return total
    return one(text) if exact else total

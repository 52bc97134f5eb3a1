"""Incremental detokenization that never splits a multi-byte character.

Byte-level BPE tokens can end in the middle of a UTF-8 sequence; decoding such a
prefix yields U+FFFD.  We decode a short window of recent tokens and only release
text once it no longer ends in a replacement character (the offsets scheme TGI
and vLLM use), so a streamed answer concatenates to exactly the full decode.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

Decode = Callable[[Sequence[int]], str]

_REPLACEMENT = "\ufffd"
# Give up holding text back after this many tokens: the model really produced U+FFFD.
_MAX_HELD_TOKENS = 8


class IncrementalDetokenizer:
    def __init__(self, decode: Decode, prompt_tail: Sequence[int] = ()):
        self._decode = decode
        # A few prompt tokens give the decoder context (leading-space rules).
        self._ids: list[int] = list(prompt_tail)
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now certain (maybe empty)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        held = len(self._ids) - self._read
        if new_text.endswith(_REPLACEMENT) and held < _MAX_HELD_TOKENS:
            return ""
        if len(new_text) <= len(prefix_text):
            return ""  # nothing visible yet (e.g. a skipped special token)
        out = new_text[len(prefix_text) :]
        self._prefix = self._read
        self._read = len(self._ids)
        return out

    def flush(self) -> str:
        """At the end: whatever is still held (an incomplete character decodes as U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text) :]


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 byte values, reversed."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class TokenBytes:
    """The bytes each token id stands for (what OpenAI's log-probabilities report as
    ``bytes``): exact for byte-level BPE (GPT-2, Llama 3, Qwen) and byte-fallback
    SentencePiece vocabularies, the token's decoded text otherwise.  Cached per id."""

    def __init__(self, tokenizer: Any):
        self._tok = tokenizer
        self._cache: dict[int, bytes] = {}
        self._added = {i: str(t) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        decoder = tokenizer.backend_tokenizer.decoder if hasattr(tokenizer, "backend_tokenizer") else None
        self._byte_level = _byte_level_alphabet() if type(decoder).__name__ == "ByteLevel" else None

    def __call__(self, token_id: int) -> bytes:
        out = self._cache.get(token_id)
        if out is None:
            out = self._cache[token_id] = self._bytes(token_id)
        return out

    def text(self, token_id: int) -> str:
        return self(token_id).decode("utf-8", errors="replace")

    def _bytes(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode()
        piece = self._tok.convert_ids_to_tokens(token_id)
        if isinstance(piece, str):
            if self._byte_level is not None and all(c in self._byte_level for c in piece):
                return bytes(self._byte_level[c] for c in piece)
            m = _BYTE_TOKEN.fullmatch(piece)
            if m:
                return bytes([int(m.group(1), 16)])
            if self._byte_level is None and "▁" in piece:
                return piece.replace("▁", " ").encode()
        return str(self._tok.decode([token_id])).encode()

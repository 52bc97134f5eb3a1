"""Incremental detokenization that never splits a multi-byte character.

Byte-level BPE tokens can end in the middle of a UTF-8 sequence; decoding such a
prefix yields U+FFFD.  We decode a short window of recent tokens and only release
text once it no longer ends in a replacement character (the offsets scheme TGI
and vLLM use), so a streamed answer concatenates to exactly the full decode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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

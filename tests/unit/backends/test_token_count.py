"""Token counts of long prompts: counted in pieces that are each freed quickly, and
stopped as soon as the count is clearly over the limit (``count_up_to``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.fakes.harness import write_tokenizer_dir
from tokenizers import Tokenizer

from modelgate.backends.chat_template import SEGMENT_CHARS, TokenCounter, count_up_to


class Spy:
    """A tokenizer that records the length of every text it is given."""

    def __init__(self, tok: Tokenizer) -> None:
        self._tok = tok
        self.sizes: list[int] = []

    def encode_batch(self, texts: list[str], **kwargs: Any) -> Any:
        self.sizes.extend(len(t) for t in texts)
        return self._tok.encode_batch(texts, **kwargs)


def tokenizer(tmp_path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(write_tokenizer_dir(tmp_path / "tok") / "tokenizer.json"))


def test_short_and_fitting_texts_are_counted_exactly(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path)
    text = "hello world " * 20_000  # 240,000 characters, 40,000 tokens
    exact = len(tok.encode(text, add_special_tokens=False))
    assert exact == 40_000
    assert count_up_to(tok, "hello world", 10) == 2
    assert count_up_to(tok, text, 100_000) == exact  # not over: the whole text, exactly
    counter = TokenCounter(tmp_path / "tok" / "tokenizer.json")
    assert counter.count(text) == counter.count(text, 100_000) == exact


def test_a_text_over_the_limit_stops_after_a_piece(tmp_path: Path) -> None:
    spy = Spy(tokenizer(tmp_path))
    text = "hello world " * 160_000  # 1.9 MB
    got = count_up_to(spy, text, 1000)
    assert 1000 < got < 10_000  # clearly over, known from the first piece alone
    assert len(spy.sizes) == 1 and spy.sizes[0] <= SEGMENT_CHARS
    assert text[spy.sizes[0]] == " " and text[spy.sizes[0] - 1] != " "  # cut before a space
    # pieces only, however far it has to go
    spy.sizes.clear()
    assert count_up_to(spy, text, 400_000, exact=False) == 320_000
    assert max(spy.sizes) <= SEGMENT_CHARS and sum(spy.sizes) == len(text)

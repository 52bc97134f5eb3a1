import pytest

from modelgate.engine.detok import IncrementalDetokenizer

TEXTS = [
    "Hello, world!",
    "Привет, мир! Как дела?",
    "你好，世界！模型服务器。",
    "Emoji 🙂🚀🎉 and € and naïve café",
    "mixed 東京 and 안녕하세요 and Größe",
]


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_text_concatenates_to_the_full_decode(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    decode = tokenizer.backend_tokenizer.decode
    d = IncrementalDetokenizer(decode)
    pieces = [d.push(i) for i in ids] + [d.flush()]
    assert "".join(pieces) == decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)


def test_multibyte_characters_span_tokens_in_this_tokenizer(tokenizer):
    """The test above is only meaningful if some character spans several tokens."""
    decode = tokenizer.backend_tokenizer.decode
    ids = tokenizer("🙂🚀🎉")["input_ids"]
    assert any("\ufffd" in decode([i]) for i in ids)


def test_flush_releases_an_incomplete_character(tokenizer):
    decode = tokenizer.backend_tokenizer.decode
    ids = tokenizer("🚀")["input_ids"]
    assert len(ids) > 1
    d = IncrementalDetokenizer(decode)
    assert d.push(ids[0]) == ""
    assert d.flush() == decode(ids[:1])

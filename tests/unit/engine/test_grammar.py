"""Constrained decoding on the demo tokenizer: whatever a model picks among the allowed
tokens, the output parses and validates (random logits stand in for a random model)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch

from modelgate.engine.demo_model import write_demo_model
from modelgate.engine.grammar import Grammars, GrammarSpec
from modelgate.errors import InvalidRequest

SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "location": {"type": "string", "maxLength": 12},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
        },
        "required": ["location", "unit", "days"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
            "owner": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 0, "maximum": 999},
                    "role": {"const": "admin"},
                },
                "required": ["id", "role"],
                "additionalProperties": False,
            },
        },
        "required": ["ok", "tags", "owner"],
        "additionalProperties": False,
    },
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99}, {"type": "null"}]},
]


@pytest.fixture(scope="module")
def grammars(tmp_path_factory: pytest.TempPathFactory) -> tuple[Grammars, object]:
    from transformers import AutoTokenizer

    path: Path = write_demo_model(tmp_path_factory.mktemp("g") / "m")
    tok = AutoTokenizer.from_pretrained(path)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    return Grammars(tok, vocab), tok


def _sample(g: Grammars, tok: object, spec: GrammarSpec, seed: int, budget: int = 400) -> str:
    c = g.constraint(spec)
    mask = g.allocate(1)
    gen = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for _ in range(budget):
        logits = torch.randn(1, g.vocab_size, generator=gen)
        c.fill(mask, 0)
        g.apply(logits, mask, [0])
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        assert c.accept(token), "the grammar refused a token its own mask allowed"
        if c.done:
            return tok.decode(ids)  # type: ignore[attr-defined]
        ids.append(token)
    raise AssertionError("no complete output within the budget")


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_any_choice_of_allowed_tokens_validates(grammars, index: int) -> None:
    g, tok = grammars
    schema = SCHEMAS[index]
    for seed in range(15):
        out = _sample(g, tok, GrammarSpec.json_schema(schema), seed)
        value = json.loads(out)  # strict: control characters in strings would fail here
        jsonschema.validate(value, schema)
        if isinstance(value, dict):  # properties come in the schema's order
            assert list(value) == [k for k in schema["properties"] if k in value]


def test_regex(grammars) -> None:
    g, tok = grammars
    for seed in range(10):
        out = _sample(g, tok, GrammarSpec("regex", r"(yes|no)-[0-9]{3}"), seed)
        assert out.split("-")[0] in ("yes", "no") and out[-3:].isdigit() and len(out.split("-")[1]) == 3


def test_json_object(grammars) -> None:
    """Any JSON object: unbounded, so a random model may not close it within a budget
    (finish_reason "length" then); every one that closes parses as an object."""
    g, tok = grammars
    closed = 0
    for seed in range(10):
        try:
            out = _sample(g, tok, GrammarSpec("json_object"), seed, budget=300)
        except AssertionError:
            continue
        assert isinstance(json.loads(out), dict)
        closed += 1
    assert closed >= 3


def test_rows_are_independent(grammars) -> None:
    """One row's constraint never masks another row (the batch shares one bitmask)."""
    g, _ = grammars
    c = g.constraint(GrammarSpec("regex", "a"))
    mask = g.allocate(2)
    mask.fill_(-1)
    c.fill(mask, 0)
    logits = torch.zeros(2, g.vocab_size)
    g.apply(logits, mask, [0])
    assert torch.isinf(logits[0]).sum() > 0
    assert not torch.isinf(logits[1]).any()


def test_a_schema_that_cannot_compile_is_a_400_naming_the_param(grammars) -> None:
    g, _ = grammars
    with pytest.raises(InvalidRequest) as err:
        g.compile(GrammarSpec.json_schema({"type": "strng"}, param="response_format"))
    assert err.value.param == "response_format" and "strng" in err.value.message
    with pytest.raises(InvalidRequest):
        GrammarSpec.json_schema(["not", "an", "object"])


def test_compiled_grammars_are_cached(grammars) -> None:
    g, _ = grammars
    spec = GrammarSpec.json_schema(SCHEMAS[0])
    assert g.compile(spec) is g.compile(GrammarSpec.json_schema(dict(SCHEMAS[0])))

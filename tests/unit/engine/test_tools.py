"""Tool calls: parsing the formats models write (outputs as Qwen2.5, Hermes 2 Pro,
Llama 3.1/3.2 and Mistral write them), streamed at any split, and the forcing grammar
of each format producing calls its parser reads back and the tool's schema accepts."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch

from modelgate.engine.demo_model import CHATML_TEMPLATE, write_demo_model
from modelgate.engine.grammar import Grammars, GrammarSpec
from modelgate.engine.tools import HERMES, LLAMA3, MISTRAL, ToolFormat, call_grammar, pick_format, plan_tools
from modelgate.errors import InvalidRequest
from modelgate.types import ChatMessage

# what the models write (decoded with special tokens skipped, as the engine does)
RECORDED = [
    (  # Qwen2.5-7B-Instruct: text, then one block per call
        HERMES,
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": 1}}\n</tool_call>',
        "Let me check.\n",
        [("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"zone": 1})],
    ),
    (  # Hermes 2 Pro: arguments first
        HERMES,
        '<tool_call>\n{"arguments": {"symbol": "TSLA"}, "name": "get_stock_fundamentals"}\n</tool_call>',
        "",
        [("get_stock_fundamentals", {"symbol": "TSLA"})],
    ),
    (  # Llama 3.1 (after <|python_tag|>, a special token)
        LLAMA3,
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (  # Llama 3.2: several calls joined by "; "
        LLAMA3,
        '{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}',
        "",
        [("a", {"x": 1}), ("b", {})],
    ),
    (  # Mistral 7B Instruct v0.3
        MISTRAL,
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]',
        "",
        [("get_weather", {"city": "Paris", "days": 3})],
    ),
    (HERMES, "Just text, <tool and no call.", "Just text, <tool and no call.", []),
    (LLAMA3, "The answer is {not json", "The answer is {not json", []),
    (HERMES, "<tool_call>\n{broken json}\n</tool_call>", "<tool_call>\n{broken json}\n</tool_call>", []),
]


def _run(fmt: ToolFormat, text: str, cuts: list[int]) -> tuple[str, list[dict]]:
    parser = fmt.parser()
    content, deltas = [], []
    for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True):
        c, d = parser.feed(text[a:b])
        content.append(c)
        deltas += d
    c, d = parser.finish()
    return "".join(content) + c, deltas + d


def _calls(deltas: list[dict]) -> list[tuple[str, dict]]:
    calls: dict[int, dict] = {}
    for d in deltas:
        cur = calls.setdefault(d["index"], {"name": "", "arguments": ""})
        cur["name"] += d["function"].get("name", "")
        cur["arguments"] += d["function"]["arguments"]
    return [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), RECORDED)
def test_recorded_outputs_whole_and_split_anywhere(fmt, text, content, calls) -> None:
    whole = _run(fmt, text, [])
    assert whole[0] == content and _calls(whole[1]) == calls
    for cut in range(1, len(text)):
        assert _same(_run(fmt, text, [cut]), whole)
    by_char = _run(fmt, text, list(range(1, len(text))))
    assert by_char[0] == content and _calls(by_char[1]) == calls


def _same(a: tuple[str, list[dict]], b: tuple[str, list[dict]]) -> bool:
    return a[0] == b[0] and _calls(a[1]) == _calls(b[1])  # ids differ per run


def test_deltas_in_openais_shape() -> None:
    _, deltas = _run(HERMES, RECORDED[0][1], [])
    head, args = deltas[0], deltas[1]
    assert set(head) == {"index", "id", "type", "function"} and head["type"] == "function"
    assert head["id"].startswith("call_") and head["function"] == {"name": "get_weather", "arguments": ""}
    assert args == {"index": 0, "function": {"arguments": '{"city":"Paris","unit":"celsius"}'}}
    assert deltas[2]["index"] == 1 and deltas[2]["id"] != head["id"]


def test_format_picked_from_the_template_or_set() -> None:
    assert pick_format(CHATML_TEMPLATE) is HERMES
    assert pick_format("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}") is MISTRAL
    assert pick_format("{%- if message.role == 'ipython' %}<|python_tag|>") is LLAMA3
    assert pick_format(CHATML_TEMPLATE, "mistral") is MISTRAL
    assert pick_format(None) is HERMES


def test_tool_choice_checked() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert plan_tools(tools, "required", None).forced == ("f",)  # type: ignore[union-attr]
    assert plan_tools(tools, {"type": "function", "function": {"name": "f"}}, False).parallel is False  # type: ignore[union-attr]
    assert plan_tools(tools, "none", None).parse is False  # type: ignore[union-attr]
    for bad, param in (
        ({"type": "function", "function": {"name": "g"}}, "tool_choice"),
        ("sometimes", "tool_choice"),
    ):
        with pytest.raises(InvalidRequest) as err:
            plan_tools(tools, bad, None)
        assert err.value.param == param
    with pytest.raises(InvalidRequest) as err:
        plan_tools([{"type": "function", "function": {}}], "auto", None)
    assert err.value.param == "tools"


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 6}, "unit": {"enum": ["c", "f"]}},
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "minimum": 0, "maximum": 99},
                    "b": {"type": "boolean"},
                },
                "required": ["a", "b"],
            },
        },
    },
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def grammars(tmp_path_factory: pytest.TempPathFactory) -> tuple[Grammars, object]:
    from transformers import AutoTokenizer

    path: Path = write_demo_model(tmp_path_factory.mktemp("t") / "m")
    tok = AutoTokenizer.from_pretrained(path)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    return Grammars(tok, vocab, [tok.convert_tokens_to_ids("<|im_end|>")]), tok


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, MISTRAL], ids=lambda f: f.name)
@pytest.mark.parametrize("parallel", [False, True])
def test_forcing_grammar_gives_calls_the_parser_reads_and_the_schema_accepts(grammars, fmt, parallel) -> None:
    g, tok = grammars
    plan = plan_tools(TOOLS, "required", parallel)
    assert plan is not None
    spec = GrammarSpec("ebnf", call_grammar(plan, fmt), param="tool_choice")
    for seed in range(8):
        c = g.constraint(spec)
        mask = g.allocate(1)
        gen = torch.Generator().manual_seed(seed)
        ids: list[int] = []
        for _ in range(400):
            logits = torch.randn(1, g.vocab_size, generator=gen)
            c.fill(mask, 0)
            g.apply(logits, mask, [0])
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
            assert c.accept(token)
            if c.done:
                break
            ids.append(token)
        else:
            raise AssertionError("no end within the budget")
        content, deltas = _run(fmt, tok.decode(ids), [])  # type: ignore[attr-defined]
        calls = _calls(deltas)
        assert content == "" and calls and (parallel or len(calls) == 1)
        for name, args in calls:
            jsonschema.validate(args, PARAMS[name])


def test_history_for_templates_has_arguments_as_objects() -> None:
    from modelgate.engine.tools import template_messages

    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    out = template_messages(
        [ChatMessage("assistant", None, tool_calls=(call,)), ChatMessage("tool", "2", tool_call_id="call_1")]
    )
    assert out[0]["tool_calls"][0]["function"] == {"name": "f", "arguments": {"a": 1}}
    assert out[1] == {"role": "tool", "content": "2", "tool_call_id": "call_1"}


def test_streamed_name_first_then_argument_fragments() -> None:
    text = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa\tris", "n": {"a": 1}}}\n</tool_call>'
    )
    content, deltas = _run(HERMES, text, list(range(1, len(text))))
    assert content == "" and deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    fragments = [d["function"]["arguments"] for d in deltas[1:]]
    assert len(fragments) > 10 and all(set(d) == {"index", "function"} for d in deltas[1:])
    # the raw tab in a string is escaped, so the arguments parse strictly
    assert json.loads("".join(fragments)) == {"city": "Pa\tris", "n": {"a": 1}}
    # cut short by max_tokens: what came stays
    _, cut = _run(HERMES, text[:60], list(range(1, 60)))
    assert cut[0]["function"]["name"] == "get_weather"

"""The parameter tables: what is refused, what leaves, and that docs/parameters.md says the same."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelgate.backends import params
from modelgate.errors import InvalidRequest
from modelgate.types import GenerationRequest, SamplingParams

DOC = Path(__file__).resolve().parents[3] / "docs" / "parameters.md"


def req(**body: object) -> GenerationRequest:
    return GenerationRequest(
        kind="chat",
        model="m",
        sampling=SamplingParams(),
        params_set=frozenset({"model", "messages", *body}),
        body={"model": "m", "messages": [], **body},
    )


def test_refused_names_the_first_parameter_and_accepts_neutral_values() -> None:
    table = params.TGI_GENERATE
    assert table.refused(req(temperature=0.5, store=True, user="u")) is None
    assert table.refused(req(presence_penalty=0, top_k=-1)) is None  # ask for nothing
    assert table.refused(req(verbosity="low", presence_penalty=0.5)) == "presence_penalty"
    with pytest.raises(InvalidRequest) as exc:
        table.check(req(logit_bias={"1": 1}))
    assert exc.value.param == "logit_bias" and "TGI's /generate" in exc.value.message


def test_forward_extra_only_where_the_table_takes_it_never_the_forbidden() -> None:
    assert params.OPENAI.refused(req(min_p=0.1), extra=("min_p",)) is None
    assert params.LOCAL.refused(req(min_p=0.1), extra=("min_p",)) == "min_p"
    assert params.OPENAI.refused(req(api_base="x"), extra=("api_base",)) == "api_base"
    body = {"model": "m", "messages": [], "min_p": 0.1, "store": True, "api_base": "x", "junk": 1}
    assert params.OPENAI.upstream_body(body, ("min_p", "api_base")) == {
        "model": "m",
        "messages": [],
        "min_p": 0.1,
    }


def test_nested_objects_are_cut_to_their_documented_shapes() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav", "x": 1}, "y": 2}
                ],
            }
        ],
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"x": 1}, "z": 3}},
        "tool_choice": "auto",
        "stream_options": {"include_usage": True, "api_base": "x"},
    }
    out = params.OPENAI.upstream_body(body)
    assert out["messages"][0]["content"] == [
        {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}
    ]
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"name": "n", "schema": {"x": 1}}}
    assert out["tool_choice"] == "auto" and out["stream_options"] == {"include_usage": True}


def test_the_documented_tables_are_the_tables() -> None:
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", DOC.read_text(), flags=re.M)
    documented = {
        name: [c.strip() for c in cells.split("|")]
        for name, cells in rows
        if "honoured" in cells or "forwarded" in cells or "refused" in cells
    }
    names = set().union(*[t.honours | t.forwards for t in params.TABLES.values()])
    assert set(documented) == names
    for name, cells in documented.items():
        for table, cell in zip(params.TABLES.values(), cells, strict=True):
            want = (
                "honoured" if name in table.honours else "forwarded" if name in table.forwards else "refused"
            )
            assert cell == want, (name, table.name)

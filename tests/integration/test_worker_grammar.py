"""``modelgate worker``'s TGI ``grammar`` (json, json_schema, regex) through
``huggingface_hub.InferenceClient.text_generation``, on the demo model: every output
matches, whole and streamed; a grammar that cannot compile is TGI's 422."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import jsonschema
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError
from tests.support.worker import start_worker, stop_worker

from modelgate.engine.demo_model import write_demo_model

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "unit": {"enum": ["c", "f"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    proc, url = start_worker(write_demo_model(tmp_path_factory.mktemp("grammar") / "tiny"))
    yield url
    stop_worker(proc)


def test_json_grammar_whole_and_streamed(worker: str) -> None:
    client = InferenceClient(base_url=worker, timeout=60)
    for seed, grammar in enumerate(
        [
            {"type": "json", "value": SCHEMA},
            {"type": "json", "value": json.dumps(SCHEMA)},
            {"type": "json_schema", "value": {"name": "w", "schema": SCHEMA}},
        ]
        * 2
    ):
        out = client.text_generation(
            "Weather:", grammar=grammar, max_new_tokens=200, seed=seed, do_sample=True, details=True
        )
        jsonschema.validate(json.loads(out.generated_text), SCHEMA)
        assert out.details is not None and out.details.finish_reason == "eos_token"
        pieces = [
            t.token.text
            for t in client.text_generation(
                "Weather:",
                grammar=grammar,
                max_new_tokens=200,
                seed=seed,
                do_sample=True,
                stream=True,
                details=True,
            )
        ]
        assert "".join(pieces) == out.generated_text


def test_regex_grammar(worker: str) -> None:
    client = InferenceClient(base_url=worker, timeout=60)
    for seed in range(5):
        out = client.text_generation(
            "Answer:",
            grammar={"type": "regex", "value": r"(yes|no), [0-9]{2}"},
            max_new_tokens=50,
            seed=seed,
            do_sample=True,
        )
        assert re.fullmatch(r"(yes|no), [0-9]{2}", out), out


def test_a_grammar_that_cannot_compile_is_a_422(worker: str) -> None:
    client = InferenceClient(base_url=worker, timeout=60)
    for grammar in ({"type": "json", "value": {"type": "strng"}}, {"type": "regex", "value": "(unclosed"}):
        with pytest.raises(ValidationError) as err:  # TGI's 422 {"error_type": "validation"}
            client.text_generation("x", grammar=grammar, max_new_tokens=5)
        assert err.value.__cause__.response.status_code == 422  # type: ignore[union-attr]
        message = str(err.value)
        assert "grammar" in message and ".cc:" not in message  # the reason, not xgrammar's source lines

"""What a request asks its output to be: JSON (``response_format``), a call of a
declared tool (``tool_choice`` ``required`` or named), or free text with tool calls
parsed out of it (``tool_choice`` ``auto``).  ``plan`` checks the request on the event
loop (cheap); ``constraints`` compiles its grammar (blocking: run it in a thread)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelgate.engine.grammar import Constraint, GrammarSpec
from modelgate.engine.tools import ToolFormat, ToolPlan, call_grammar, plan_tools
from modelgate.errors import InvalidRequest
from modelgate.types import GenerationRequest

if TYPE_CHECKING:
    from modelgate.engine.runtime import LocalModel


@dataclass(frozen=True, slots=True)
class Structure:
    json: GrammarSpec | None = None  # response_format's grammar
    tools: ToolPlan | None = None

    @property
    def constrained(self) -> bool:
        return self.json is not None or (self.tools is not None and self.tools.forced is not None)

    @property
    def parses_tools(self) -> bool:
        return self.tools is not None and self.tools.parse


def response_format_spec(fmt: Mapping[str, Any] | None) -> GrammarSpec | None:
    """OpenAI's ``response_format`` as a grammar (None for text)."""
    kind = (fmt or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_object")
    if kind == "json_schema":
        inner = (fmt or {}).get("json_schema")
        if not isinstance(inner, Mapping) or not isinstance(inner.get("schema"), Mapping):
            raise InvalidRequest(
                "response_format.json_schema.schema must be a JSON schema object.", param="response_format"
            )
        # strict or not, the schema is enforced (as vLLM and SGLang do)
        return GrammarSpec.json_schema(dict(inner["schema"]))
    raise InvalidRequest(
        "response_format.type must be text, json_object or json_schema.", param="response_format"
    )


def tgi_grammar_spec(grammar: Mapping[str, Any] | None) -> GrammarSpec | None:
    """TGI's ``grammar``: ``{"type": "json", "value": schema}`` (an object or its JSON
    text), ``{"type": "json_schema", "value": {"name", "schema"}}`` or
    ``{"type": "regex", "value": "..."}``."""
    if grammar is None:
        return None
    kind, value = grammar.get("type"), grammar.get("value")
    if kind == "json_schema" and isinstance(value, Mapping):
        kind, value = "json", value.get("schema")
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise InvalidRequest("grammar.value is not JSON.", param="grammar") from None
        return GrammarSpec.json_schema(value, param="grammar")
    if kind == "regex" and isinstance(value, str) and value:
        return GrammarSpec("regex", value, param="grammar")
    raise InvalidRequest("grammar must be {type: json|json_schema|regex, value}.", param="grammar")


def compile_one(local: LocalModel, spec: GrammarSpec) -> Constraint:
    """One constraint (blocking); InvalidRequest naming ``spec.param`` if it cannot compile."""
    grammars = local.grammars()
    grammars.compile(spec)
    return grammars.constraint(spec)


def plan(request: GenerationRequest) -> Structure:
    body = request.body or {}
    parallel = body.get("parallel_tool_calls") if isinstance(body, Mapping) else None
    tools = plan_tools(request.tools, request.tool_choice, parallel if isinstance(parallel, bool) else None)
    return Structure(response_format_spec(request.response_format), tools)


def spec_for(structure: Structure, fmt: ToolFormat) -> GrammarSpec | None:
    """The grammar to decode with: a forced call wins over response_format."""
    if structure.tools is not None and structure.tools.forced is not None:
        return GrammarSpec("ebnf", call_grammar(structure.tools, fmt), param="tool_choice")
    return structure.json


def constraints(local: LocalModel, structure: Structure, n: int) -> list[Constraint | None]:
    """One constraint per choice (blocking: compiling takes milliseconds to seconds)."""
    if not structure.constrained:
        return [None] * n
    spec = spec_for(structure, local.tool_format)
    assert spec is not None
    grammars = local.grammars()
    grammars.compile(spec)  # the 400 for a schema that cannot compile, before any submit
    return [grammars.constraint(spec) for _ in range(n)]

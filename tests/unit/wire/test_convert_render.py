from __future__ import annotations

import orjson
import pytest

from modelgate.config import LimitsConfig, ModelConfig
from modelgate.errors import InvalidRequest
from modelgate.types import Chunk, GenerationRequest, SamplingParams, Usage
from modelgate.wire import convert, render

MODEL = ModelConfig(
    id="m",
    backend="openai",
    endpoints=({"url": "http://127.0.0.1:1/v1"},),
    forward_params=("top_k", "min_p", "chat_template"),
)  # type: ignore[arg-type]
LIMITS = LimitsConfig()


def chat(**extra):
    return convert.chat_request(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], **extra}, MODEL, LIMITS, "r"
    )


def test_sampling_and_params_set() -> None:
    req = chat(max_completion_tokens=5, max_tokens=9, temperature=0, stop="END", seed=1, top_k=40)
    assert req.sampling.max_tokens == 5  # max_completion_tokens wins
    assert req.sampling.stop == ("END",) and req.sampling.greedy and req.sampling.top_k == 40
    assert {"temperature", "stop", "seed"} <= req.params_set


def test_content_parts_fold_text_and_keep_others() -> None:
    req = chat(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {"url": "data:x"}},
                    {"type": "text", "text": "b"},
                ],
            }
        ]
    )
    msg = req.messages[0]
    assert msg.content == "ab" and msg.parts[0]["type"] == "image_url"


def test_extras_policy() -> None:
    assert chat(min_p=0.1).body["min_p"] == 0.1  # allow-listed for this model
    with pytest.raises(InvalidRequest) as exc:
        chat(chat_template="{{ secrets }}")  # never forwarded, even when listed
    assert exc.value.param == "chat_template"
    with pytest.raises(InvalidRequest) as exc:
        chat(audio={"voice": "x"})
    assert exc.value.param == "audio"
    assert chat(store=False, metadata={"a": "b"}).model == "m"  # accepted, meaningless here


def test_completion_prompt_forms() -> None:
    ok = convert.completion_request({"model": "m", "prompt": ["one"]}, MODEL, LIMITS, "r")
    assert ok.prompt == "one" and ok.sampling.max_tokens == 16
    with pytest.raises(InvalidRequest, match="single string prompt"):
        convert.completion_request({"model": "m", "prompt": ["a", "b"]}, MODEL, LIMITS, "r")


def test_embedding_inputs() -> None:
    assert convert.embedding_request({"model": "m", "input": "a"}, MODEL, LIMITS, "r").inputs == ("a",)
    assert convert.embedding_request({"model": "m", "input": [1, 2]}, MODEL, LIMITS, "r").inputs == ((1, 2),)
    with pytest.raises(InvalidRequest):
        convert.embedding_request({"model": "m", "input": [""]}, MODEL, LIMITS, "r")


def test_aggregator_merges_streamed_tool_calls() -> None:
    agg = render.Aggregator()
    agg.add(Chunk(tool_calls=({"index": 0, "id": "c1", "function": {"name": "get", "arguments": '{"a"'}},)))
    agg.add(Chunk(tool_calls=({"index": 0, "function": {"arguments": ": 1}"}},), finish_reason="tool_calls"))
    agg.add(Chunk(usage=Usage(3, 4)))
    body = agg.chat_body("id", "m", 1)
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get", "arguments": '{"a": 1}'} and call["id"] == "c1"
    assert body["choices"][0]["message"]["content"] is None
    assert body["usage"]["total_tokens"] == 7


def test_renderer_role_once_usage_only_when_asked_raw_passthrough() -> None:
    req = GenerationRequest(kind="chat", model="m", sampling=SamplingParams(), include_usage=False)
    r = render.ChunkRenderer(req, "id", "m")
    first = orjson.loads(r.event(Chunk(text="a"))[6:])  # type: ignore[index]
    second = orjson.loads(r.event(Chunk(text="b"))[6:])  # type: ignore[index]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert second["choices"][0]["delta"] == {"content": "b"}
    assert r.event(Chunk(usage=Usage(1, 2))) is None
    assert r.event(Chunk(text="x", raw=b'data: {"up": 1}\n\n')) == b'data: {"up": 1}\n\n'
    assert r.event(Chunk(text="x", raw=b"")) is None


def test_logit_bias_and_bounds_of_what_can_be_sampled() -> None:
    assert chat(logit_bias={"5": -100, "12": 2.5}).sampling.logit_bias == ((5, -100.0), (12, 2.5))
    assert chat(temperature=1e-6, seed=2**63 - 1, repetition_penalty=0.01).sampling.seed == 2**63 - 1
    for extra, param in (
        ({"temperature": 1e-7}, "temperature"),
        ({"repetition_penalty": 0.009}, "repetition_penalty"),
        ({"seed": 2**63}, "seed"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
    ):
        with pytest.raises(InvalidRequest) as err:
            chat(**extra)
        assert err.value.param == param


def test_completion_logprobs_are_merged_and_rendered() -> None:
    first = {"tokens": ["a", "b"], "token_logprobs": [-0.1, -0.2], "top_logprobs": [{"a": -0.1}, {"b": -0.2}]}
    first["text_offset"] = [0, 1]
    then = {"tokens": ["c"], "token_logprobs": [-0.3], "top_logprobs": [{"c": -0.3}], "text_offset": [2]}
    agg = render.Aggregator()
    agg.add(Chunk(text="ab", logprobs=first))
    agg.add(Chunk(text="c", logprobs=then, finish_reason="length"))
    body = agg.completion_body("r", "m", 0)
    assert body["choices"][0]["logprobs"] == {
        "tokens": ["a", "b", "c"],
        "token_logprobs": [-0.1, -0.2, -0.3],
        "top_logprobs": [{"a": -0.1}, {"b": -0.2}, {"c": -0.3}],
        "text_offset": [0, 1, 2],
    }
    req = convert.completion_request({"model": "m", "prompt": "x", "logprobs": 1}, MODEL, LIMITS, "r")
    assert req.sampling.logprobs and req.sampling.top_logprobs == 1
    streamed = render.ChunkRenderer(req, "r", "m").render(Chunk(text="c", logprobs=then))
    assert streamed["choices"][0]["logprobs"] == then
    plain = render.ChunkRenderer(req, "r", "m").render(Chunk(text="c"))
    assert plain["choices"][0]["logprobs"] is None


def test_upstream_only_parameters_are_validated_and_reach_params_set() -> None:
    req = chat(
        logit_bias={"7": -100}, reasoning_effort="low", prompt_cache_key="k", verbosity="high", tools=[]
    )
    assert {"logit_bias", "reasoning_effort", "prompt_cache_key", "verbosity"} <= req.params_set
    assert "tools" not in req.params_set  # empty: not set
    for bad in ({"logit_bias": {"7": 101}}, {"reasoning_effort": "max"}, {"verbosity": 3}):
        with pytest.raises(InvalidRequest) as exc:
            chat(**bad)
        assert exc.value.param is not None and exc.value.param.split(".")[0] in bad


def test_reasoning_in_history_is_accepted() -> None:
    for key in ("reasoning", "reasoning_content"):
        req = chat(
            messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", key: "r"}]
        )
        assert req.messages[1].content == "b"


def test_aggregator_keeps_reasoning_usage_details_and_fingerprint() -> None:
    agg = render.Aggregator()
    agg.add(Chunk(reasoning={"reasoning": "thin"}, meta={"system_fingerprint": "fp"}))
    agg.add(Chunk(reasoning={"reasoning": "king"}, text="answer", finish_reason="stop"))
    agg.add(Chunk(usage=Usage(3, 4, {"prompt_tokens_details": {"cached_tokens": 2}})))
    body = agg.chat_body("id", "m", 1)
    assert body["choices"][0]["message"]["reasoning"] == "thinking"
    assert body["system_fingerprint"] == "fp"
    assert (
        body["usage"]["prompt_tokens_details"] == {"cached_tokens": 2} and body["usage"]["total_tokens"] == 7
    )

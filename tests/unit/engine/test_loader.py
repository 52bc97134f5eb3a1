import json

import pytest
import torch

from modelgate.engine.loader import DirectoryFiles, LoadOptions, MemoryFiles, load_model
from modelgate.errors import ConfigError, EngineError


def memory_copy(path, **changes):
    files = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    for name, data in changes.items():
        if data is None:
            files.pop(name, None)
        else:
            files[name] = data
    return MemoryFiles(files)


def test_in_memory_files_load_the_same_model_as_the_directory(tiny_model):
    a = load_model(DirectoryFiles(tiny_model), device="cpu")
    b = load_model(memory_copy(tiny_model), device="cpu")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ids = torch.tensor([[1, 5, 9, 42]])
    assert torch.equal(a.model(ids).logits, b.model(ids).logits)
    assert b.tokenizer.chat_template and b.eos_token_ids == a.eos_token_ids
    assert b.max_context == 2048


def test_loaded_model_matches_transformers_from_pretrained(tiny_model):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model)
    got = load_model(DirectoryFiles(tiny_model), device="cpu")
    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    assert torch.allclose(ref(ids).logits, got.model(ids).logits)


def test_pickle_weights_are_refused(tiny_model):
    files = memory_copy(tiny_model, **{"model.safetensors": None, "pytorch_model.bin": b"pickle"})
    with pytest.raises(EngineError, match="safetensors"):
        load_model(files, device="cpu")


def test_remote_code_needs_trust(tiny_model):
    cfg = json.loads((tiny_model / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "evil.Model"}
    files = memory_copy(tiny_model, **{"config.json": json.dumps(cfg).encode()})
    with pytest.raises(ConfigError, match="trust_remote_code"):
        load_model(files, device="cpu")


def test_missing_tokenizer_is_a_clear_error(tiny_model):
    with pytest.raises(EngineError, match=r"tokenizer\.json"):
        load_model(memory_copy(tiny_model, **{"tokenizer.json": None}), device="cpu")


def test_dtype_and_unavailable_cuda(tiny_model):
    lm = load_model(DirectoryFiles(tiny_model), device="cpu", dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            load_model(DirectoryFiles(tiny_model), device="cuda:0")


# -- from_pretrained for plain directories (issue 16 item 6) ----------------------------


def test_plain_directory_loads_through_from_pretrained_with_the_same_logits(tiny_model, monkeypatch):
    from modelgate.engine import loader

    calls = []
    real = loader._from_pretrained

    def spy(*args):
        calls.append(args[0].__name__)
        return real(*args)

    monkeypatch.setattr(loader, "_from_pretrained", spy)
    plain = load_model(DirectoryFiles(tiny_model), device="cpu")
    sealed_like = load_model(memory_copy(tiny_model), device="cpu")  # the in-memory path
    assert calls == ["Qwen2ForCausalLM"]
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    assert torch.equal(plain.model(ids).logits, sealed_like.model(ids).logits)


@pytest.mark.parametrize("device_map", ["auto", "cpu", {"": "cpu"}])
def test_device_map_is_accepted(tiny_model, device_map, monkeypatch):
    from modelgate.engine import loader

    pytest.importorskip("accelerate")
    passed = []
    real = loader._from_pretrained

    def spy(model_cls, root, kwargs, method):
        passed.append(kwargs.get("device_map"))
        return real(model_cls, root, kwargs, method)

    ref = load_model(DirectoryFiles(tiny_model), device="cpu")
    monkeypatch.setattr(loader, "_from_pretrained", spy)
    lm = load_model(DirectoryFiles(tiny_model), device="cpu", options=LoadOptions(device_map=device_map))
    assert passed == [device_map] and lm.device == torch.device("cpu")
    ids = torch.tensor([[7, 7, 1, 2]])
    assert torch.equal(lm.model(ids).logits, ref.model(ids).logits)


@pytest.mark.parametrize(
    ("quantization", "named"),
    [
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes"),
        ({"quant_method": "torchao", "quant_type": "int8_weight_only"}, "torchao"),
        ({"quant_method": "gptq", "bits": 4}, "gptq"),
        ({"quant_method": "no-such-method"}, "no-such-method"),
    ],
)
def test_quantization_without_its_kernels_is_a_clear_config_error(tiny_model, quantization, named):
    import importlib.util

    needs = {"bitsandbytes": "bitsandbytes", "torchao": "torchao", "gptq": "gptqmodel"}.get(named)
    if needs and importlib.util.find_spec(needs) and torch.cuda.is_available():
        pytest.skip(f"{needs} is installed here: nothing is absent")
    with pytest.raises(ConfigError, match=f"quantization '{named}'") as err:
        load_model(DirectoryFiles(tiny_model), device="cpu", options=LoadOptions(quantization=quantization))
    assert err.value.permanent


def test_a_checkpoints_own_quantization_config_is_named_too(tmp_path, tiny_model):
    import shutil

    model = shutil.copytree(tiny_model, tmp_path / "awq")
    cfg = json.loads((model / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="quantization 'awq'"):
        load_model(DirectoryFiles(model), device="cpu")


def test_sealed_models_keep_the_in_memory_path_and_refuse_what_needs_a_directory(tiny_model):
    with pytest.raises(ConfigError, match="plain model directory"):
        load_model(memory_copy(tiny_model), device="cpu", options=LoadOptions(device_map="auto"))
    lm = load_model(memory_copy(tiny_model), device="cpu", options=LoadOptions(attn_implementation="eager"))
    assert lm.model.config._attn_implementation == "eager"


def test_attn_implementation_reaches_the_model(tiny_model):
    lm = load_model(
        DirectoryFiles(tiny_model), device="cpu", options=LoadOptions(attn_implementation="eager")
    )
    assert lm.model.config._attn_implementation == "eager"

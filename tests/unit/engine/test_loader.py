import json

import pytest
import torch

from modelgate.engine.loader import DirectoryFiles, MemoryFiles, load_model
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

import json

from modelgate.engine.demo_model import write_demo_model


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, tiny_model):
    again = write_demo_model(tmp_path / "again", seed=0)
    other = write_demo_model(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (tiny_model / name).read_bytes()
    assert (other / "model.safetensors").read_bytes() != (tiny_model / "model.safetensors").read_bytes()


def test_tiny_chat_model_has_chatml_template_and_few_parameters(tiny_model):
    from safetensors.torch import load_file

    cfg = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in cfg["chat_template"]
    params = sum(t.numel() for t in load_file(tiny_model / "model.safetensors").values())
    assert 100_000 < params < 1_000_000
    gen = json.loads((tiny_model / "generation_config.json").read_text())
    vocab = json.loads((tiny_model / "tokenizer.json").read_text())["added_tokens"]
    assert gen["eos_token_id"] == next(t["id"] for t in vocab if t["content"] == "<|im_end|>")


def test_embedding_kind_has_sentence_transformers_files(tmp_path):
    out = write_demo_model(tmp_path / "emb", kind="embedding")
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]

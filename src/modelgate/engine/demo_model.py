"""``modelgate demo-model``: a tiny random-weight model with a real tokenizer.

The tokenizer is a byte-level BPE trained offline on a small built-in corpus (with
non-ASCII text, so multi-byte characters span tokens); chat models get a ChatML
template.  Everything is deterministic for a seed and made in seconds, so tests
and demos never download anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

Kind = Literal["chat", "embedding"]
Size = Literal["tiny", "small"]

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# ChatML, with tools as Qwen2.5 renders them (Hermes style): the tools' signatures in a
# system turn, the assistant's calls as ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``,
# tool results as a user turn of ``<tool_response>`` blocks.  Without tools it renders
# exactly as plain ChatML (no default system prompt).
CHATML_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, '
    '"arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and tools and loop.first %}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "{{- '<|im_start|>assistant' }}{%- if message['content'] %}{{- '\\n' + message['content'] }}{%- endif %}"
    "{%- for call in message['tool_calls'] %}{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' }}"
    "{{- fn['arguments'] if fn['arguments'] is string else fn['arguments'] | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A gateway routes requests to models.",
    "Hello, world! How are you today? I am fine, thank you. What can I do for you?",
    "Models answer questions, write code, and translate text between languages.",
    "def add(a, b):\n    return a + b\n\nclass Server:\n    pass\n",
    "Température, café, naïve, façade, Ærøskøbing, Straße, Größe, über, señor, año.",
    "Привет, мир! Как дела? Москва, Санкт-Петербург, спасибо, пожалуйста.",
    "你好，世界！今天天气很好。我们一起去公园散步吧。模型服务器。",  # noqa: RUF001
    "こんにちは世界。東京は大きな都市です。ありがとうございます。",
    "안녕하세요 세계. 감사합니다. 서버와 모델.",
    "Emoji: 🙂 🚀 🎉 ✨ 👍 — dashes – and “quotes” and ‘single’ … ellipsis €100 £5 ¥7.",  # noqa: RUF001
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828 42.",
    "user assistant system: You are a helpful assistant. Answer briefly.",
)

# context window of the chat sizes: the small one holds an agent's long conversation
_CHAT_CONTEXT = {"tiny": 2048, "small": 4096}
# name -> (vocab target, hidden, layers, intermediate, heads, kv heads)
_CHAT_SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (1024, 64, 4, 128, 4, 2),
    "small": (2048, 640, 9, 1792, 10, 2),
}
_EMBED_SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (1024, 64, 2, 128, 4, 4),
    "small": (2048, 384, 6, 1536, 6, 6),
}


def _train_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS) * 4, trainer)
    return tok


def _chat_config(vocab: int, size: str) -> dict[str, Any]:
    _, hidden, layers, inter, heads, kv = _CHAT_SIZES[size]
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "max_position_embeddings": _CHAT_CONTEXT[size],
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }


def _embed_config(vocab: int, size: str) -> dict[str, Any]:
    _, hidden, layers, inter, heads, _kv = _EMBED_SIZES[size]
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }


def _weights(config: dict[str, Any], seed: int, special_ids: list[int]) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(**config)
    auto = AutoModelForCausalLM if config["model_type"] == "qwen2" else AutoModel
    model = auto.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5 if p.dim() > 1 else 0.02)
            if p.dim() == 1 and p.shape[0] == config["hidden_size"]:
                p.fill_(1.0)  # norm weights
        if config["model_type"] == "qwen2":
            # Special tokens get near-zero logits: random greedy output rarely ends on its own.
            model.get_input_embeddings().weight[special_ids] *= 0.01
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings and "lm_head.weight" in state:
        del state["lm_head.weight"]
    return state


def _tokenizer_config(kind: Kind, size: str) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": _CHAT_CONTEXT[size] if kind == "chat" else 512,
        "bos_token": None,
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
    }
    if kind == "chat":
        base |= {"eos_token": "<|im_end|>", "chat_template": CHATML_TEMPLATE}
    else:
        base |= {"eos_token": "<|endoftext|>"}
    return base


def _sentence_transformers_files(dest: Path, hidden: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    _write_json(dest / "modules.json", modules)
    pooling = {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True}
    (dest / "1_Pooling").mkdir(exist_ok=True)
    _write_json(dest / "1_Pooling" / "config.json", pooling)
    _write_json(dest / "sentence_bert_config.json", {"max_seq_length": 256, "do_lower_case": False})


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_demo_model(dest: str | Path, kind: Kind = "chat", size: Size = "tiny", seed: int = 0) -> Path:
    """Write the model into ``dest`` (created) and return its path."""
    from safetensors.torch import save_file

    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    sizes = _CHAT_SIZES if kind == "chat" else _EMBED_SIZES
    tok = _train_tokenizer(sizes[size][0])
    vocab = tok.get_vocab_size()
    special_ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    config = _chat_config(vocab, size) if kind == "chat" else _embed_config(vocab, size)
    if kind == "chat":
        config |= {
            "bos_token_id": special_ids[0],
            "eos_token_id": special_ids[2],
            "pad_token_id": special_ids[0],
        }
    tok.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", _tokenizer_config(kind, size))
    _write_json(out / "config.json", config)
    if kind == "chat":
        _write_json(
            out / "generation_config.json", {"eos_token_id": special_ids[2], "pad_token_id": special_ids[0]}
        )
    else:
        _sentence_transformers_files(out, config["hidden_size"])
    save_file(_weights(config, seed, special_ids), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out

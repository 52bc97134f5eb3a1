"""Loading a transformers model from files on disk or in memory.

Sealed models are decrypted into memory, never to disk, so the loader reads
through the small ``ModelFiles`` seam: a name list and ``read(name) -> bytes``.
Weights are safetensors only; the model is built on the meta device and the
tensors are assigned, so nothing is initialised twice.

Models load side by side, each in its own thread, except for one step:
transformers imports its modules lazily (the tokenizer classes, each model type's
configuration and modeling code, and on first use some 1,400 modules of torch,
scipy and sympy), and two threads importing them at once see each other's
half-initialised modules (``cannot import name 'PreTrainedTokenizerFast' from
'transformers'``).  So building the tokenizer and the empty model on the meta
device, the step that imports, runs under one lock (``IMPORTS``); reading the
weights, moving them to the device and warming up run in parallel (in-memory files;
a directory's ``from_pretrained`` runs wholly under the lock, see ``_load_pretrained``).

A plain directory loads through transformers' ``from_pretrained``, so what users
set there works as they expect: ``quantization_config`` (the model's own, or the
config's ``quantization``: bitsandbytes, torchao, GPTQ/AWQ where their kernels are
installed), ``device_map`` and ``attn_implementation``.  A sealed (in-memory) model
keeps the meta-device path above: it has no path for ``from_pretrained`` to read.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from modelgate.errors import ConfigError, ModelFormatError

# The one process-wide object here, as process-wide as the import system it guards
# (sys.modules): held while a load runs code that may import for the first time.
IMPORTS = threading.Lock()


class ModelFiles(Protocol):
    """A model's files, by relative name (``"config.json"``, ``"1_Pooling/config.json"``)."""

    def names(self) -> list[str]: ...

    def read(self, name: str) -> bytes: ...


class DirectoryFiles:
    """A plain transformers model directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: model directory not found")

    def names(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


class MemoryFiles:
    """Files already in memory (e.g. decrypted from a sealed model)."""

    def __init__(self, files: Mapping[str, bytes]):
        self._files = dict(files)

    def names(self) -> list[str]:
        return sorted(self._files)

    def read(self, name: str) -> bytes:
        try:
            return self._files[name]
        except KeyError:
            raise FileNotFoundError(name) from None


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # transformers PreTrainedModel, eval mode, on its device
    tokenizer: Any  # PreTrainedTokenizerFast
    device: Any  # torch.device
    eos_token_ids: frozenset[int]
    max_context: int
    files: tuple[str, ...] = ()


def read_json(files: ModelFiles, name: str) -> Any:
    try:
        return json.loads(files.read(name))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{name}: invalid JSON: {exc}") from exc


def resolve_device(spec: str) -> Any:
    import torch

    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r}: torch sees no CUDA/ROCm device")
    return torch.device(spec)


def resolve_dtype(spec: str, device: Any, config: Mapping[str, Any]) -> Any:
    import torch

    if spec != "auto":
        return getattr(torch, spec)
    if device.type == "cpu":
        return torch.float32  # half precision matmuls are slow on most CPUs
    declared = config.get("torch_dtype") or config.get("dtype")
    if declared in ("float16", "bfloat16"):
        return getattr(torch, declared)
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_tokenizer(files: ModelFiles) -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    try:
        raw = files.read("tokenizer.json").decode("utf-8")
    except FileNotFoundError:
        raise ModelFormatError("the model has no tokenizer.json (a fast tokenizer is required)") from None
    cfg = read_json(files, "tokenizer_config.json") or {}
    special = read_json(files, "special_tokens_map.json") or {}
    kwargs: dict[str, Any] = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        value = cfg.get(key, special.get(key))
        if isinstance(value, dict):
            value = value.get("content")
        if value is not None:
            kwargs[key] = value
    for key in ("model_max_length", "padding_side", "clean_up_tokenization_spaces", "do_lower_case"):
        if key in cfg:
            kwargs[key] = cfg[key]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(raw), **kwargs)
    template = cfg.get("chat_template")
    if template is None and "chat_template.jinja" in files.names():
        template = files.read("chat_template.jinja").decode("utf-8")
    if isinstance(template, list):  # named templates: take "default"
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    tok.chat_template = template
    return tok


def _state_dict(files: ModelFiles) -> dict[str, Any]:
    from safetensors import safe_open
    from safetensors.torch import load

    state: dict[str, Any] = {}
    for name in _weight_names(files):
        path = _weights_path(files, name)
        if path is None:
            state.update(load(files.read(name)))  # bytes in memory: briefly two copies
            continue
        with safe_open(path, framework="pt") as f:  # mmap: peak stays near one copy
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                state[key] = f.get_tensor(key)
    return state


def _weight_names(files: ModelFiles) -> list[str]:
    names = [n for n in files.names() if n.endswith(".safetensors") and "/" not in n]
    if not names:
        if any(n.endswith((".bin", ".pt", ".pth")) for n in files.names()):
            raise ModelFormatError("only safetensors weights are loaded (found pickle weights: convert them)")
        raise ModelFormatError("the model has no *.safetensors weights")
    return names


def preflight(files: ModelFiles) -> None:
    """Raise what a load of these files would fail on every time, without reading the
    weights: config.json, a ``model_type`` transformers knows (unless
    the model brings its own code), tokenizer.json, safetensors weights."""
    config = read_json(files, "config.json")
    if not isinstance(config, dict):
        raise ModelFormatError("the model has no config.json")
    model_type = config.get("model_type")
    if not model_type:
        raise ModelFormatError("config.json has no model_type")
    if "tokenizer.json" not in files.names():
        raise ModelFormatError("the model has no tokenizer.json (a fast tokenizer is required)")
    _weight_names(files)
    if not config.get("auto_map"):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        if model_type not in CONFIG_MAPPING_NAMES:
            raise ModelFormatError(
                f"unsupported model_type {model_type!r}: this transformers does not know it"
            )


def _weights_path(files: ModelFiles, name: str) -> str | None:
    """A path safetensors can mmap: the file itself, or a sealed model's memfd
    (decrypted in this process's memory, never on a filesystem)."""
    if isinstance(files, DirectoryFiles):
        return str(files.root / name)
    memfd_path = getattr(files, "memfd_path", None)
    return str(memfd_path(name)) if callable(memfd_path) else None


def _materialise(model: Any, state: dict[str, Any], device: Any, dtype: Any) -> None:
    """Assign loaded tensors to a meta-built model; recompute non-persistent buffers."""
    import torch

    state = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()
    }
    # Checkpoints named for the base model (``model.``-less) or with a prefix.
    prefix = getattr(model, "base_model_prefix", "")
    own = set(model.state_dict())
    if prefix and not own & set(state):
        state = {f"{prefix}.{k}" if f"{prefix}.{k}" in own else k: v for k, v in state.items()}
    result = model.load_state_dict(state, assign=True, strict=False)
    model.tie_weights()
    for p in model.parameters():
        p._is_hf_initialized = True
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ModelFormatError(f"the weights lack {len(missing)} tensors, e.g. {missing[:3]} ({result})")
    for key, buf in model.named_non_persistent_buffers():
        mod, _, name = key.rpartition(".")
        model.get_submodule(mod).register_buffer(name, torch.empty_like(buf, device=device), persistent=False)
    model.initialize_weights()  # only what was not loaded: rotary tables and the like
    for key, buf in model.named_buffers():
        if buf.is_meta:
            raise ModelFormatError(f"buffer {key} was not initialised")


def _build(config_dict: dict[str, Any], *, embedding: bool, trust_remote_code: bool) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    if config_dict.get("auto_map") and not trust_remote_code:
        raise ConfigError("this model needs custom code: set trust_remote_code: true only if you trust it")
    model_type = config_dict.get("model_type")
    if not model_type:
        raise ModelFormatError("config.json has no model_type")
    try:
        config = AutoConfig.for_model(**config_dict)
    except (ValueError, KeyError) as exc:
        raise ModelFormatError(f"unsupported model_type {model_type!r}: {exc}") from exc
    auto = AutoModel if embedding else AutoModelForCausalLM
    return config, auto


@dataclass(frozen=True)
class LoadOptions:
    """What ``from_pretrained`` takes beyond the files (plain directories only):
    ``device_map`` (``"auto"``, ``"cpu"``, ``"cuda:0"``, or a module -> device mapping;
    needs accelerate), ``quantization`` (a ``quantization_config`` as a dict, with
    ``quant_method``) and ``attn_implementation`` (``"sdpa"``, ``"eager"``, ...)."""

    device_map: str | Mapping[str, Any] | None = None
    quantization: Mapping[str, Any] | None = None
    attn_implementation: str | None = None

    @property
    def needs_pretrained(self) -> bool:
        return self.device_map is not None or self.quantization is not None


def load_model(
    files: ModelFiles,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    embedding: bool = False,
    options: LoadOptions | None = None,
) -> LoadedModel:
    """Load a causal LM (or, with ``embedding``, an encoder) and its tokenizer: a plain
    directory through ``from_pretrained``, in-memory files through the meta device."""
    import torch

    opts = options or LoadOptions()
    config_dict = read_json(files, "config.json")
    if not isinstance(config_dict, dict):
        raise ModelFormatError("the model has no config.json")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev, config_dict)
    if isinstance(files, DirectoryFiles):
        model, tokenizer = _load_pretrained(
            files,
            config_dict,
            dev,
            torch_dtype,
            opts,
            embedding=embedding,
            trust_remote_code=trust_remote_code,
        )
        dev = _input_device(model, dev)
    else:
        if config_dict.get("auto_map") and trust_remote_code:
            raise ConfigError("custom model code cannot be loaded from a sealed (in-memory) model")
        if opts.needs_pretrained or config_dict.get("quantization_config"):
            raise ConfigError(
                "quantization and device_map load only from a plain model directory, not a sealed model"
            )
        with IMPORTS:
            tokenizer = load_tokenizer(files)
            config, auto = _build(config_dict, embedding=embedding, trust_remote_code=trust_remote_code)
            attn = {"attn_implementation": opts.attn_implementation} if opts.attn_implementation else {}
            with torch.device("meta"):
                model = auto.from_config(config, dtype=torch_dtype, **attn)
        state = _state_dict(files)  # reading and decrypting: side by side with other loads
        with IMPORTS:  # tying weights is transformers' too: not safe from two threads at once
            _materialise(model, state, dev, torch_dtype)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=dev,
        eos_token_ids=_eos_ids(files, config_dict, tokenizer),
        max_context=_max_context(config_dict, tokenizer),
        files=tuple(files.names()),
    )


def _load_pretrained(
    files: DirectoryFiles,
    config_dict: dict[str, Any],
    dev: Any,
    torch_dtype: Any,
    opts: LoadOptions,
    *,
    embedding: bool,
    trust_remote_code: bool,
) -> tuple[Any, Any]:
    """``from_pretrained`` on a directory, wholly under ``IMPORTS``: it imports as it
    loads (quantizers, integrations), and it is not thread-safe — four loads of the demo
    model at once in transformers 5.25 all came back with ``lm_head`` untied and random
    (``missing_keys``: lm_head.weight), one at a time never.  Directory loads therefore
    run one after another; the missing-keys check below refuses such a model."""
    _weight_names(files)  # safetensors only, before transformers falls back to pickles
    quant = config_dict.get("quantization_config") or opts.quantization
    method = str(quant.get("quant_method", "?")) if isinstance(quant, Mapping) else None
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "use_safetensors": True, "output_loading_info": True}
    if opts.attn_implementation:
        kwargs["attn_implementation"] = opts.attn_implementation
    if opts.device_map is not None:
        kwargs["device_map"] = (
            dict(opts.device_map) if isinstance(opts.device_map, Mapping) else opts.device_map
        )
    elif quant is not None and dev.type != "cpu":
        kwargs["device_map"] = str(dev)  # quantized weights are placed as they load
    with IMPORTS:
        tokenizer = load_tokenizer(files)
        if trust_remote_code and config_dict.get("auto_map"):
            from transformers import AutoModel, AutoModelForCausalLM

            model_cls: Any = AutoModel if embedding else AutoModelForCausalLM
            kwargs["trust_remote_code"] = True
        else:
            config, auto = _build(config_dict, embedding=embedding, trust_remote_code=trust_remote_code)
            model_cls = auto._model_mapping[type(config)]  # imports the modeling module
            kwargs["config"] = config
        if opts.quantization is not None:
            kwargs["quantization_config"] = _quantization_config(opts.quantization)
        if "device_map" in kwargs:
            _require_accelerate()
        model, info = _from_pretrained(model_cls, files.root, kwargs, method)
    missing = list(info.get("missing_keys") or ())
    if missing:
        raise ModelFormatError(f"the weights lack {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
    if "device_map" not in kwargs and quant is None:
        model = model.to(dev)
    return model, tokenizer


def _from_pretrained(
    model_cls: Any, root: Path, kwargs: dict[str, Any], method: str | None
) -> tuple[Any, Any]:
    try:
        model, info = model_cls.from_pretrained(root, **kwargs)
    except (ImportError, ValueError, RuntimeError) as exc:
        if method is None or (isinstance(exc, RuntimeError) and not isinstance(exc, NotImplementedError)):
            raise
        raise ConfigError(f"quantization {method!r} cannot load here: {' '.join(str(exc).split())}") from exc
    return model, info


def _quantization_config(raw: Mapping[str, Any]) -> Any:
    """A ``quantization`` dict as transformers' config object, or a clear error."""
    from transformers.quantizers.auto import AutoQuantizationConfig

    method = raw.get("quant_method")
    if not method:
        raise ConfigError("quantization needs 'quant_method' (e.g. bitsandbytes, torchao, gptq, awq)")
    try:
        return AutoQuantizationConfig.from_dict(dict(raw))
    except (ImportError, ValueError, TypeError) as exc:
        raise ConfigError(f"quantization {method!r}: {' '.join(str(exc).split())}") from exc


def _require_accelerate() -> None:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ConfigError("device_map needs the accelerate package (pip install 'accelerate>=1.1')") from None


def _input_device(model: Any, default: Any) -> Any:
    """Where input ids go: the input embeddings' device (a device map may spread the rest)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return getattr(model, "device", default)


def _eos_ids(files: ModelFiles, config: Mapping[str, Any], tokenizer: Any) -> frozenset[int]:
    gen = read_json(files, "generation_config.json") or {}
    ids: set[int] = set()
    for source in (gen.get("eos_token_id"), config.get("eos_token_id"), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(i for i in source if isinstance(i, int))
    return frozenset(ids)


def _max_context(config: Mapping[str, Any], tokenizer: Any) -> int:
    limit = config.get("max_position_embeddings") or config.get("n_positions") or 2048
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        limit = tok_limit
    return int(limit)

"""One loaded local model, as the backend and the worker see it: where its files
come from (directory or sealed), its engine or embedder, prompts from chat
messages, stats, and unloading."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from modelgate.config import Config, ModelConfig
from modelgate.engine.batching import BatchLimits
from modelgate.engine.embedder import Embedder, pooling_spec
from modelgate.engine.engine import Engine
from modelgate.engine.loader import DirectoryFiles, LoadedModel, ModelFiles, load_model
from modelgate.errors import ConfigError, InvalidRequest
from modelgate.types import GenerationRequest


def open_files(model: ModelConfig, config: Config, root: Path | None = None) -> tuple[ModelFiles, Any]:
    """The model's files and what must be closed after loading (a sealed reader)."""
    path = Path(root or model.path or "")
    has_key = bool(model.key_file or model.key_env or model.key_command)
    try:
        from modelgate.storage.sealed import is_sealed, open_sealed
    except ImportError:  # pragma: no cover - storage is part of the package
        is_sealed = None  # type: ignore[assignment]
    if is_sealed is not None and is_sealed(path):
        from modelgate.storage.keys import load_key

        if not has_key:
            raise ConfigError(f"model {model.id!r}: {path} is sealed; set key_file, key_env or key_command")
        env_value = config.secret(model.key_env) if model.key_env else None
        reader = open_sealed(path, load_key(model.key_file, env_value, model.key_command))
        return reader, reader
    return DirectoryFiles(path), None


class LocalModel:
    def __init__(
        self, model: ModelConfig, loaded: LoadedModel, *, engine: Engine | None, embedder: Embedder | None
    ):
        self.config = model
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.engine = engine
        self.embedder = embedder

    def require_engine(self) -> Engine:
        if self.engine is None:
            raise InvalidRequest(f"model {self.config.id!r} is an embedding model", param="model")
        return self.engine

    def require_embedder(self) -> Embedder:
        if self.embedder is None:
            raise InvalidRequest(f"model {self.config.id!r} is not an embedding model", param="model")
        return self.embedder

    def require_chat_template(self) -> None:
        if not self.tokenizer.chat_template:
            raise InvalidRequest(
                f"model {self.config.id!r} has no chat template: use /v1/completions with a prompt, "
                "or add a chat_template to its tokenizer_config.json",
                param="messages",
            )

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.kind == "chat":
            self.require_chat_template()
            messages = [{"role": m.role, "content": m.content or ""} for m in request.messages]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.encode(request.prompt or "")
        if not ids:
            raise InvalidRequest("the prompt is empty", param="prompt")
        return list(ids)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def stats(self) -> dict[str, Any]:
        return self.engine.stats() if self.engine is not None else {}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = self.embedder = None
        self.loaded = None  # type: ignore[assignment]
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass


def load_local_model(
    model: ModelConfig, config: Config, root: Path | None = None, *, warmup: bool = True
) -> LocalModel:
    """Blocking: open, load, warm up.  Call it from a thread."""
    files, closer = open_files(model, config, root)
    embedding = model.task == "embedding"
    try:
        loaded = load_model(
            files,
            device=model.device,
            dtype=model.dtype,
            trust_remote_code=model.trust_remote_code,
            embedding=embedding,
        )
        spec = pooling_spec(files, loaded.max_context) if embedding else None
    finally:
        if closer is not None:
            closer.close()
    if spec is not None:
        return LocalModel(model, loaded, engine=None, embedder=Embedder(loaded, spec))
    limits = BatchLimits(max_batch_size=model.max_batch_size, kv_cache_tokens=model.kv_cache_tokens)
    engine = Engine(loaded, limits)
    engine.start(warmup=warmup)
    return LocalModel(model, loaded, engine=engine, embedder=None)

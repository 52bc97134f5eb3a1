"""One loaded local model, as the backend and the worker see it: where its files
come from (directory or sealed), its engine or embedder, prompts from chat
messages, stats, and unloading."""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelgate.config import Config, ModelConfig
from modelgate.engine.batching import BatchLimits
from modelgate.engine.embedder import Embedder, pooling_spec
from modelgate.engine.engine import Engine
from modelgate.engine.grammar import Grammars
from modelgate.engine.loader import (
    IMPORTS,
    DirectoryFiles,
    LoadedModel,
    LoadOptions,
    ModelFiles,
    load_model,
)
from modelgate.engine.tools import ToolFormat, pick_format, template_messages
from modelgate.errors import ConfigError, InvalidRequest, ModelGateError, ModelNotReady
from modelgate.types import GenerationRequest

# what the filesystem says about a path does not change by asking again
_PERMANENT_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def is_permanent(exc: BaseException) -> bool:
    """Whether a load that failed with ``exc`` would fail the same way again, by the
    error's class: a missing file, a wrong key, an unsupported model are; an import
    error, an out-of-memory, an I/O hiccup are not."""
    if isinstance(exc, ModelGateError):
        return exc.permanent
    return isinstance(exc, _PERMANENT_OS_ERRORS)


def load_cause(exc: BaseException) -> str:
    """The cause of a failed load in one line: our message, or the foreign class and text."""
    text = exc.message if isinstance(exc, ModelGateError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:500]


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """A model's last failed load: why, which attempt, and when the next one runs
    (``next_at`` on the caller's clock; None: not retried)."""

    model_id: str
    cause: str
    permanent: bool
    attempt: int
    next_at: float | None = None

    @classmethod
    def of(cls, model_id: str, exc: BaseException, attempt: int, next_at: float | None) -> LoadFailure:
        permanent = is_permanent(exc)
        return cls(model_id, load_cause(exc), permanent, attempt, None if permanent else next_at)

    def describe(self, now: float) -> str:
        head = f"model {self.model_id!r} failed to load: {self.cause}"
        if self.permanent:
            return f"{head} (not retried: this cannot change until the model or its config is fixed)"
        if self.next_at is None:
            return f"{head} (gave up after {self.attempt} attempts)"
        return f"{head} (attempt {self.attempt}; the next in {max(0.0, self.next_at - now):.1f} s)"

    def error(self, now: float) -> ModelNotReady:
        retry = None if self.next_at is None else max(1.0, self.next_at - now)
        return ModelNotReady(self.describe(now), retry_after=retry)


def open_files(model: ModelConfig, config: Config, root: Path | None = None) -> tuple[ModelFiles, Any]:
    """The model's files and what must be closed after loading (a sealed reader)."""
    path = Path(root or model.path or "")
    has_key = bool(model.key_file or model.key_env or model.key_command)
    with IMPORTS:  # first imported here, by one loading thread at a time
        from modelgate.storage.keys import load_key
        from modelgate.storage.sealed import is_sealed, open_sealed
    if is_sealed(path):
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
        self._grammars: Grammars | None = None
        self._grammars_lock = threading.Lock()

    def grammars(self) -> Grammars:
        """The model's grammar compiler, made at the first constrained request (blocking:
        reading the vocabulary takes a while on a large one; call it from a thread)."""
        with self._grammars_lock:
            if self._grammars is None:
                head = self.loaded.model.get_output_embeddings()  # the logits' width
                vocab = int(head.weight.shape[0]) if head is not None else len(self.tokenizer)
                eos = sorted(self.loaded.eos_token_ids)
                self._grammars = Grammars(self.tokenizer, vocab, eos or None)
            return self._grammars

    @property
    def tool_format(self) -> ToolFormat:
        template = self.tokenizer.chat_template
        return pick_format(template if isinstance(template, str) else None, self.config.tool_parser)

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
            messages = template_messages(request.messages)
            tools = [dict(t) for t in request.tools] or None
            text = self.tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=True
            )
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
            options=LoadOptions(
                device_map=model.device_map,
                quantization=model.quantization,
                attn_implementation=model.attn_implementation,
            ),
        )
        spec = pooling_spec(files, loaded.max_context) if embedding else None
    finally:
        if closer is not None:
            closer.close()
    if spec is not None:
        return LocalModel(model, loaded, engine=None, embedder=Embedder(loaded, spec))
    limits = BatchLimits(max_batch_size=model.max_batch_size, kv_cache_tokens=model.kv_cache_tokens)
    engine = Engine(loaded, limits, prefix_cache_bytes=model.kv_prefix_cache_mb << 20)
    engine.start(warmup=warmup)
    return LocalModel(model, loaded, engine=engine, embedder=None)

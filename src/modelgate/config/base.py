"""What every config section is made of: a frozen pydantic model that refuses unknown keys."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

ENV_PREFIX = "MODELGATE_"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _collect_env_names(raw: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(raw, dict):
        for k, v in raw.items():
            if isinstance(k, str) and k.endswith("_env") and isinstance(v, str):
                names.add(v)
            names |= _collect_env_names(v)
    elif isinstance(raw, list):
        for v in raw:
            names |= _collect_env_names(v)
    return names

"""Per-key limits, quotas and usage: in this process, or shared through Redis (``docs/state.md``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelgate.config import Config
    from modelgate.state.store import LimitStore


def redis_url(config: Config) -> str | None:
    """The Redis/Valkey URL ``state`` names (``redis_url`` or the variable ``redis_url_env``)."""
    state = config.state
    return state.redis_url or (config.secret(state.redis_url_env) if state.redis_url_env else None)


def build_store(config: Config) -> LimitStore:
    """The store the config names: Redis when ``state.redis_url`` (or ``redis_url_env``) is
    set, else this process's memory."""
    url = redis_url(config)
    if url:
        from modelgate.state.redis import RedisStore

        return RedisStore(config.state, url)
    from modelgate.state.memory import MemoryStore

    return MemoryStore()

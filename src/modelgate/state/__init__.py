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


def redacted(url: str) -> str:
    """A Redis URL without its user and password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


async def probe(config: Config) -> dict[str, object] | None:
    """``modelgate check``: whether the configured Redis answers a PING within the state's
    timeout (None: counts live in each process)."""
    url = redis_url(config)
    if not url:
        return None
    from modelgate.state.redis import connect

    client = connect(config.state, url)
    out: dict[str, object] = {"backend": "redis", "url": redacted(url), "on_error": config.state.on_error}
    try:
        await client.ping()  # type: ignore[misc]
        out["state"] = "ok"
    except Exception as exc:
        out["state"] = "unreachable"
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return out

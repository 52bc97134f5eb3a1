"""Upstream cooldowns shared by replicas through Redis.

An endpoint that one replica saw refuse (a 429's ``Retry-After``, a quota refusal:
``router.outlier``) cools there, and one that failed too often is ejected there; an
ejection elsewhere cools the endpoint here for as long (its own state, ejection count
and probes unchanged); this service finds new or longer cooldowns every
``interval_s``, writes their absolute deadline (epoch seconds) into one hash and
announces it on a channel; every replica applies what it hears, and what the hash
holds when it starts, to its own endpoint of that model and URL.  Deadlines are
wall-clock times, so replicas' clocks are assumed in step (NTP).  Active health probes
stay local to each replica; only cooldowns are shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("modelgate.state")

HASH = "{mg:cooldowns}:c1"
CHANNEL = "mg:cooldowns:c1"


class Coolable(Protocol):
    """What the service needs of the router (``router.router.Router``)."""

    def cooldowns(self) -> dict[tuple[str, str], float]:
        """(model id, endpoint URL) -> seconds its cooldown has left, for those cooling."""
        ...

    def cool(self, model_id: str, url: str, seconds: float) -> bool:
        """Cool an endpoint for ``seconds``; False when there is no such endpoint."""
        ...


class SharedCooldowns:
    def __init__(
        self,
        redis: Redis,
        router: Coolable,
        *,
        interval_s: float = 0.25,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._router = router
        self._interval = interval_s
        self._wall = wall
        self._known: dict[tuple[str, str], float] = {}  # deadlines announced or heard
        self._tasks: list[asyncio.Task[None]] = []
        self.announced = 0
        self.applied = 0

    def _apply(self, model: str, url: str, deadline: float) -> None:
        left = deadline - self._wall()
        if left <= 0 or deadline <= self._known.get((model, url), 0.0):
            return
        self._known[(model, url)] = deadline
        if self._router.cool(model, url, left):
            self.applied += 1

    async def announce_new(self) -> None:
        """Announce the local cooldowns that are new or longer than any known."""
        now = self._wall()
        for (model, url), left in self._router.cooldowns().items():
            deadline = now + left
            if deadline <= self._known.get((model, url), 0.0) + 0.5:
                continue
            self._known[(model, url)] = deadline
            field = orjson.dumps([model, url]).decode()
            message = orjson.dumps({"model": model, "url": url, "until": deadline})
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(HASH, field, str(deadline))
                pipe.publish(CHANNEL, message)
                await pipe.execute()
            self.announced += 1
        if len(self._known) > 10_000:
            self._known = {k: v for k, v in self._known.items() if v > now}

    async def load(self) -> None:
        """What other replicas announced before this one listened (expired ones removed)."""
        table = await self._redis.hgetall(HASH)  # type: ignore[misc]
        now = self._wall()
        stale = []
        for field, value in table.items():
            model, url = orjson.loads(field)
            deadline = float(value)
            if deadline <= now:
                stale.append(field)
            else:
                self._apply(model, url, deadline)
        if stale:
            await self._redis.hdel(HASH, *stale)  # type: ignore[misc]

    async def _announcing(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.announce_new()
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("cooldown not announced", extra={"error": str(exc)})

    async def _listening(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                await self.load()
                while True:
                    msg: Any = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        body = orjson.loads(msg["data"])
                        self._apply(str(body["model"]), str(body["url"]), float(body["until"]))
            except (RedisError, OSError, TimeoutError, ValueError, KeyError) as exc:
                log.debug("cooldown channel lost; listening again", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._announcing()), loop.create_task(self._listening())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._redis.aclose()

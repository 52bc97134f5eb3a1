"""Per-key counts in Redis (or Valkey), shared by every replica.

One round trip admits a request: a server-side Lua script (EVALSHA; loaded again when
the server has lost it) refills and checks a key's rpm and tpm buckets, its in-flight
leases and its token quotas with the clock of the Redis server, and takes them all or
none.  A second, off the request's path, settles the reservation and ends the lease
when the request is over (folded into the key's next admission when one goes out in
the same batch).  These go out pipelined on one connection of their own (``_Batches``):
redis-py's command API cost about 130 µs of CPU a call here, this 15 to 30.
Leases carry an expiry that this replica renews every ``lease_s / 3``; a replica that dies stops renewing and its leases lapse within
``lease_s``.  The usage ledger is batched per replica and written every
``usage_flush_s``.

Keys are ``{mg:<key name>}:<layout>:<what>``: the hash tag puts every key of one API
key on one Cluster slot (a script touches only those); ``<layout>`` (``l1``, ``u1``)
names the data layout the scripts of this version read and write, so replicas of two
versions whose layouts differ count apart instead of misreading each other.

When Redis cannot answer within ``timeout_ms`` the call has failed; after three in a
row the breaker skips Redis for ``breaker_s``.  Meanwhile ``on_error`` decides:
``open`` admits, ``closed`` refuses (503), ``local`` counts in this process at each
limit / ``replicas``.  Every such answer is counted and ``status`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from modelgate.config import StateConfig
from modelgate.state.memory import MemoryStore
from modelgate.state.store import USAGE_KINDS, KeyPolicy, Ledger, Limit, Refused, Ticket, Unavailable, utc_day

log = logging.getLogger("modelgate.state")

LAYOUT = "l1"  # limits: bucket hash, lease set, quota hash
USAGE_LAYOUT = "u1"  # ledger: one hash per key name and UTC day
FAILURES_TO_OPEN = 3
USAGE_TTL_S = 62 * 86400

_CIVIL = """
local function civil(secs)
  local z = math.floor(secs / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02d', y, m, d)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function refill(limit, level, stamp)
  if limit <= 0 then return 0 end
  if not level then return limit end
  return math.min(limit, tonumber(level) + (now - stamp) * limit / 60)
end
local function store_buckets(key, rpm, tpm, r, tk)
  redis.call('HSET', key, 'r', string.format('%.6f', r), 't', string.format('%.6f', tk),
             's', string.format('%.6f', now))
  local full = 0
  if rpm > 0 then full = math.max(full, (rpm - r) * 60 / rpm) end
  if tpm > 0 then full = math.max(full, (tpm - tk) * 60 / tpm) end
  redis.call('PEXPIRE', key, math.ceil(full * 1000) + 1000)
end

-- a settle: leases ARGV[from..] end; the reservations become what was used (delta: used - reserved)
local function settle(rpm, tpm, quota, delta, from)
  if #ARGV >= from then redis.call('ZREM', KEYS[2], unpack(ARGV, from)) end
  if delta == 0 then return end
  if tpm > 0 then
    local b = redis.call('HMGET', KEYS[1], 'r', 't', 's')
    local stamp = tonumber(b[3]) or now
    local r = refill(rpm, b[1], stamp)
    local tk = math.min(tpm, refill(tpm, b[2], stamp) - delta)
    store_buckets(KEYS[1], rpm, tpm, r, tk)
  end
  if quota then
    local day = civil(now)
    local month = string.sub(day, 1, 7)
    local q = redis.call('HMGET', KEYS[3], 'd', 'dt', 'm', 'mt')
    local dt = (q[1] == day) and tonumber(q[2]) or 0
    local mt = (q[3] == month) and tonumber(q[4]) or 0
    redis.call('HSET', KEYS[3], 'd', day, 'dt', math.max(0, dt + delta), 'm', month,
               'mt', math.max(0, mt + delta))
    redis.call('EXPIRE', KEYS[3], 3024000)
  end
end
"""

# KEYS: bucket hash, lease zset, quota hash
# ARGV: rpm, tpm, max_in_flight, lease seconds, daily, monthly (0: none), reserve, lease id,
#       then settles of the same key folded in: used - reserved (summed), leases to end...
ADMIT = (
    "-- modelgate admit "
    + LAYOUT
    + "\n"
    + _CIVIL
    + """
local rpm, tpm, mif = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local reserve = tonumber(ARGV[7])
local daily, monthly = tonumber(ARGV[5]), tonumber(ARGV[6])
settle(rpm, tpm, daily > 0 or monthly > 0, tonumber(ARGV[9]), 10)
local b = redis.call('HMGET', KEYS[1], 'r', 't', 's')
local stamp = tonumber(b[3]) or now
local r = refill(rpm, b[1], stamp)
local tk = refill(tpm, b[2], stamp)
if mif > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local n = redis.call('ZCARD', KEYS[2])
  if n >= mif then return {'in_flight', tostring(n)} end
end
if tpm > 0 and tk <= 0 then return {'tpm', string.format('%.3f', (1 - tk) * 60 / tpm)} end
if rpm > 0 and r < 1 then return {'rpm', string.format('%.3f', (1 - r) * 60 / rpm)} end
if daily > 0 or monthly > 0 then
  local day = civil(now)
  local month = string.sub(day, 1, 7)
  local q = redis.call('HMGET', KEYS[3], 'd', 'dt', 'm', 'mt')
  local dt = (q[1] == day) and tonumber(q[2]) or 0
  local mt = (q[3] == month) and tonumber(q[4]) or 0
  if daily > 0 and dt >= daily then return {'daily_tokens', '0'} end
  if monthly > 0 and mt >= monthly then return {'monthly_tokens', '0'} end
  redis.call('HSET', KEYS[3], 'd', day, 'dt', dt + reserve, 'm', month, 'mt', mt + reserve)
  redis.call('EXPIRE', KEYS[3], 3024000)
end
if rpm > 0 or tpm > 0 then
  if rpm > 0 then r = r - 1 end
  if tpm > 0 then tk = tk - reserve end
  store_buckets(KEYS[1], rpm, tpm, r, tk)
end
if mif > 0 then
  local ttl = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[8])
  redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 1000) + 1000)
end
return {'ok', '0'}
"""
)

# KEYS: bucket hash, lease zset, quota hash
# ARGV: rpm, tpm, quota (1/0), used - reserved (summed), leases to end...
SETTLE = (
    "-- modelgate settle "
    + LAYOUT
    + "\n"
    + _CIVIL
    + """
settle(tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1', tonumber(ARGV[4]), 5)
return 1
"""
)

# KEYS: lease zset; ARGV: lease seconds, lease ids...
RENEW = (
    "-- modelgate renew "
    + LAYOUT
    + "\n"
    + """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
return 1
"""
)


def key_names(name: str) -> list[str]:
    """A key's bucket hash, lease set and quota hash (one Cluster slot)."""
    base = "{mg:" + name + "}:" + LAYOUT
    return [base + ":b", base + ":f", base + ":q"]


def usage_key(name: str, day: str) -> str:
    return "{mg:" + name + "}:" + USAGE_LAYOUT + ":" + day


class _Script:
    """A Lua script run by EVALSHA, loaded again when the server answers NOSCRIPT."""

    def __init__(self, redis: Redis, source: str) -> None:
        import hashlib

        self._redis = redis
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._redis.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:
            return await self._redis.eval(self._source, len(keys), *keys, *args)  # type: ignore[misc]


def _bulk(value: object) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class _Hot:
    """A script of the request path, packed by hand: ``EVALSHA`` and, when the server has
    lost it, ``EVAL`` with the same keys and arguments."""

    def __init__(self, source: str) -> None:
        import hashlib

        self.source = source.encode()
        sha = hashlib.sha1(self.source).hexdigest().encode()
        self._evalsha = _bulk(b"EVALSHA") + _bulk(sha)
        self._eval = _bulk(b"EVAL") + _bulk(self.source)

    @staticmethod
    def fixed(keys: list[str], args: list[Any]) -> tuple[int, bytes]:
        """The keys and the arguments a key's policy fixes, packed once per policy."""
        parts = [_bulk(len(keys)), *(_bulk(k) for k in keys), *(_bulk(a) for a in args)]
        return len(parts), b"".join(parts)

    @staticmethod
    def tail(fixed: tuple[int, bytes], *args: Any) -> tuple[int, bytes]:
        """Everything after the script: the fixed part, then ``args``."""
        n, head = fixed
        return n + 2 + len(args), head + b"".join([_bulk(a) for a in args])

    def packed(self, tail: tuple[int, bytes], *, load: bool = False) -> bytes:
        n, rest = tail
        return b"*%d\r\n" % n + (self._eval if load else self._evalsha) + rest


_Entry = tuple["_Hot", tuple[int, bytes], "asyncio.Future[Any] | None"]
_Packs = tuple[tuple[int, bytes], tuple[int, bytes], str]  # a policy's admit and settle heads, lease set


class _Batches:
    """The request path's commands on one connection of their own, pipelined: what is
    queued while a batch is out goes out together with the next, in one write, and the
    replies are read in order.  A command goes out on the next turn of the event loop
    (a settle before the client has its answer, so its next request, wherever it goes,
    finds the key settled), or with the next batch while one is out.  A script the
    server has lost is sent again with its source.  A batch that fails fails each of its
    commands, is reported once (``on_error``), and the connection is made again."""

    def __init__(
        self, redis: Redis, on_error: Callable[[BaseException], None], admit: _Hot, settle: _Hot
    ) -> None:
        self._admit = admit
        self._settle = settle
        self._pool = redis.connection_pool
        self._conn = self._pool.make_connection()
        self._on_error = on_error
        self._queue: list[tuple[Any, ...]] = []
        self._wake = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._busy = False

    def admit(self, packs: _Packs, reserve: int, lease: str) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._worker = loop.create_task(self._work())
        future = loop.create_future()
        self._queue.append((packs, reserve, lease, future))
        self._wake.set()
        return future

    def settle(self, packs: _Packs, delta: int, lease: str) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())
        self._queue.append((packs, delta, lease, None))
        self._wake.set()

    def _commands(self, queue: list[tuple[Any, ...]]) -> list[_Entry]:
        """A key's settles folded into its first admission of the batch (or one settle)."""
        settles: dict[int, tuple[_Packs, list[Any]]] = {}
        for packs, amount, lease, future in queue:
            if future is None:
                acc = settles.setdefault(id(packs), (packs, [0]))[1]
                acc[0] += amount
                if lease and len(acc) < 1000:
                    acc.append(lease)
        out: list[_Entry] = []
        for packs, reserve, lease, future in queue:
            if future is not None:
                folded = settles.pop(id(packs), None)
                extra = folded[1] if folded is not None else (0,)
                out.append((self._admit, _Hot.tail(packs[0], reserve, lease, *extra), future))
        for packs, acc in settles.values():
            out.append((self._settle, _Hot.tail(packs[1], *acc), None))
        return out

    @property
    def idle(self) -> bool:
        return not self._queue and not self._wake.is_set() and not self._busy and not self.tasks

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            queue, self._queue = self._queue, []
            if queue:
                self._busy = True
                try:
                    await self._run(self._commands(queue))
                finally:
                    self._busy = False

    async def _run(self, batch: list[_Entry]) -> None:
        conn = self._conn
        done = 0
        try:
            await conn.connect()  # at once when connected
            await conn.send_packed_command([s.packed(t) for s, t, _ in batch], check_health=False)
            for script, tail, future in batch:
                try:
                    reply: Any = await conn.read_response()
                except NoScriptError:
                    done += 1
                    self._again(script, tail, future)
                    continue
                except ResponseError as exc:
                    reply = exc
                done += 1
                if future is not None and not future.done():
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        except Exception as exc:
            await conn.disconnect(nowait=True)
            self._on_error(exc)
            for _, _, future in batch[done:]:
                if future is not None and not future.done():
                    future.set_exception(exc)

    def _again(self, script: _Hot, tail: tuple[int, bytes], future: asyncio.Future[Any] | None) -> None:
        """NOSCRIPT: the same command with the script's source, on a connection of the pool."""

        async def load() -> None:
            try:
                conn = await self._pool.get_connection()
                try:
                    await conn.send_packed_command(script.packed(tail, load=True), check_health=False)
                    reply = await conn.read_response()
                finally:
                    await self._pool.release(conn)
            except Exception as exc:
                if future is not None and not future.done():
                    future.set_exception(exc)
                return
            if future is not None and not future.done():
                future.set_result(reply)

        task = asyncio.get_running_loop().create_task(load())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, within_s: float) -> None:
        """Until what is queued has gone out and been answered (at most ``within_s``)."""
        if self._queue:
            self._wake.set()
        deadline = asyncio.get_running_loop().time() + within_s
        # a condition over the queue, the worker and NOSCRIPT reloads: polled (close and tests only)
        while not self.idle and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.002)

    async def close(self) -> None:
        await self.drain(1.0)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self._conn.disconnect()


def connect(config: StateConfig, url: str) -> Redis:
    timeout = config.timeout_ms / 1000
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # a failed call is reported at once; on_error decides
        health_check_interval=0,
    )


class RedisStore:
    kind = "redis"

    def __init__(
        self,
        config: StateConfig,
        url: str,
        *,
        client: Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._redis = client if client is not None else connect(config, url)
        self._admit = _Hot(ADMIT)
        self._settle = _Hot(SETTLE)
        self._renew = _Script(self._redis, RENEW)
        self._batches = _Batches(self._redis, self._failed, self._admit, self._settle)
        self._clock = clock
        self._local = MemoryStore()  # on_error: local
        self._replica = os.urandom(6).hex()
        self._seq = itertools.count()
        self._fixed: dict[KeyPolicy, _Packs] = {}
        self._leases: dict[str, set[str]] = {}  # lease set -> the leases this replica holds there
        self._pending: dict[
            tuple[str, str, str], list[int]
        ] = {}  # (day, key, model) -> usage not yet written
        self.ledger = Ledger()  # this process's totals (for /metrics)
        self._loops: list[asyncio.Task[None]] = []
        self._failures = 0
        self._open_until = 0.0
        self.last_error: str | None = None
        self.errors = 0  # calls that failed
        self.degraded_answers = 0  # admissions decided by on_error

    # -- the breaker ---------------------------------------------------------------------
    def _usable(self) -> bool:
        return self._failures < FAILURES_TO_OPEN or self._clock() >= self._open_until

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self._failures += 1
        first = self.last_error is None
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self._failures >= FAILURES_TO_OPEN:
            self._open_until = self._clock() + self._config.breaker_s
        if first:
            log.warning(
                "redis state store failed; on_error=%s applies",
                self._config.on_error,
                extra={"error": self.last_error},
            )

    def _succeeded(self) -> None:
        if self.last_error is not None:
            log.warning("redis state store answers again", extra={"after": self.last_error})
        self._failures = 0
        self.last_error = None

    def _degraded(self, policy: KeyPolicy, reserve: int) -> Ticket:
        self.degraded_answers += 1
        mode = self._config.on_error
        if mode == "open":
            return Ticket(policy, reserve, None)
        if mode == "closed":
            raise Unavailable(self.last_error or "redis unavailable")
        return self._local.admit_now(policy.share(self._config.replicas), reserve)

    # -- admission and settling -------------------------------------------------------------
    async def admit(self, policy: KeyPolicy, reserve: int) -> Ticket:
        if not self._usable():
            return self._degraded(policy, reserve)
        packs = self._packed(policy)
        lease = f"{self._replica}:{next(self._seq)}" if policy.max_in_flight else ""
        try:
            kind, value = await self._batches.admit(packs, reserve, lease)
        except (RedisError, OSError, TimeoutError):
            return self._degraded(policy, reserve)  # the batch's failure is counted once
        if self._failures:
            self._succeeded()
        if kind != b"ok":
            limit: Limit = kind.decode()
            if limit == "in_flight":
                raise Refused(limit, policy.max_in_flight or 0, 1.0, int(value))
            bound = {"rpm": policy.rpm, "tpm": policy.tpm, "daily_tokens": policy.daily_tokens}
            raise Refused(limit, bound.get(limit, policy.monthly_tokens) or 0, float(value))
        if lease:
            self._leases.setdefault(packs[2], set()).add(lease)
        return Ticket(policy, reserve, self, lease or None)

    def _packed(self, policy: KeyPolicy) -> _Packs:
        """A policy's admit and settle commands as far as it fixes them, and its lease set."""
        found = self._fixed.get(policy)
        if found is None:
            keys = key_names(policy.name)
            admit = _Hot.fixed(
                keys,
                [
                    policy.rpm or 0,
                    policy.tpm or 0,
                    policy.max_in_flight or 0,
                    self._config.lease_s,
                    policy.daily_tokens or 0,
                    policy.monthly_tokens or 0,
                ],
            )
            quota = 1 if (policy.daily_tokens or policy.monthly_tokens) else 0
            settle = _Hot.fixed(keys, [policy.rpm or 0, policy.tpm or 0, quota])
            if len(self._fixed) > 10_000:  # policies come from the config: never this many
                self._fixed.clear()
            found = self._fixed[policy] = (admit, settle, keys[1])
        return found

    def settle(self, ticket: Ticket, used: int) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        policy = ticket.policy
        packs = self._packed(policy)
        leases = packs[2]
        lease = ticket.lease or ""
        if lease:
            held = self._leases.get(leases)
            if held is not None:
                held.discard(lease)
                if not held:
                    del self._leases[leases]
        delta = used - ticket.reserved if policy.counts_tokens else 0
        if not lease and not delta:
            return
        # off the request's path; if it fails, the lease lapses and the reservation stays charged
        self._batches.settle(packs, delta, lease)

    # -- the usage ledger -------------------------------------------------------------------
    def record(self, key: str, model: str, prompt: int, completion: int, error: bool) -> None:
        day = utc_day()
        self.ledger.add(day, key, model, prompt, completion, error)
        row = (1, prompt, completion, 1 if error else 0)
        counts = self._pending.get((day, key, model))
        if counts is None:
            self._pending[(day, key, model)] = list(row)
        else:
            for i, v in enumerate(row):
                counts[i] += v

    async def flush_usage(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for (day, key, model), counts in pending.items():
                    name = usage_key(key, day)
                    for kind, v in zip(USAGE_KINDS, counts, strict=True):
                        if v:
                            pipe.hincrby(name, model + "|" + kind, v)
                    pipe.expire(name, USAGE_TTL_S)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            if len(self._pending) < 100_000:  # written with the next batch
                for k, counts in pending.items():
                    mine = self._pending.setdefault(k, [0, 0, 0, 0])
                    for i, v in enumerate(counts):
                        mine[i] += v

    async def usage(
        self, keys: list[str], days: list[str], key: str | None, model: str | None
    ) -> list[dict[str, Any]]:
        await self.flush_usage()
        names = [k for k in keys if key is None or k == key]
        wanted = [(day, name) for day in days for name in names]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for day, name in wanted:
                    pipe.hgetall(usage_key(name, day))
                tables = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise Unavailable(self.last_error or "redis unavailable") from None
        out: list[dict[str, Any]] = []
        for (day, name), table in zip(wanted, tables, strict=True):
            by_model: dict[str, dict[str, int]] = {}
            for field, value in table.items():
                m, _, kind = field.decode().rpartition("|")
                if model is None or m == model:
                    by_model.setdefault(m, dict.fromkeys(USAGE_KINDS, 0))[kind] = int(value)
            out.extend({"day": day, "key": name, "model": m, **c} for m, c in sorted(by_model.items()))
        return out

    def local_usage(self) -> dict[tuple[str, str], list[int]]:
        return self.ledger.totals

    # -- leases -------------------------------------------------------------------------------
    async def renew_leases(self) -> None:
        for zset, held in list(self._leases.items()):
            if held:
                try:
                    await self._renew([zset], [self._config.lease_s, *held])
                except (RedisError, OSError, TimeoutError) as exc:
                    self._failed(exc)
                    return

    async def _every(self, seconds: float, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except Exception:
                log.exception("state store background work failed")

    # -- the admin view and the process --------------------------------------------------------
    def describe(self, policy: KeyPolicy) -> dict[str, Any]:
        return {"in_flight_here": len(self._leases.get(key_names(policy.name)[1], ())), "shared": True}

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": "redis",
            "state": "ok" if self.last_error is None else "degraded",
            "on_error": self._config.on_error,
            "breaker": "closed" if self._usable() else "open",
            "errors": self.errors,
            "degraded_answers": self.degraded_answers,
        }
        if self.last_error is not None:
            out["error"] = self.last_error
        return out

    async def ping(self) -> None:
        try:
            await self._redis.ping()  # type: ignore[misc]
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
        else:
            if self._failures:
                self._succeeded()

    async def start(self) -> None:
        await self.ping()
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self._every(self._config.lease_s / 3, self.renew_leases)),
            loop.create_task(self._every(self._config.usage_flush_s, self.flush_usage)),
        ]

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._batches.close()
        await self.flush_usage()
        await self._redis.aclose()

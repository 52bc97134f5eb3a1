"""API keys: loaded once, kept only as HMAC-SHA256 digests, compared in constant time.

Keys come from config, a file (one key per line, ``#`` comments; refused when it is
open to group or others, as model key files are) or an environment variable
(comma-separated; resolved by ``config.py``).  Any of them may give a key as its
digest instead, ``sha256:<64 hex>`` (the SHA-256 of the key), so the configuration
need not hold the key itself.  Each key may be scoped to models, limited (requests
and tokens per minute, requests in flight: ``limits.py``) and given an expiry.
Admin keys reach ``/admin/*`` and nothing else needs them.  Repeated failures from
one client address are throttled (``throttle.py``); a valid key never is.  A store
built with ``previous`` (SIGHUP) reads the key files again and keeps what the
unchanged keys used of their limits and the failure counts.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from modelgate.api.limits import KeyLimits
from modelgate.api.throttle import FailureThrottle, client_address, parse_networks
from modelgate.config import ApiKey, AuthConfig, Config, KeyEntry
from modelgate.errors import AuthenticationFailed, ConfigError, PermissionDenied
from modelgate.state.memory import MemoryStore
from modelgate.state.store import KeyPolicy, LimitStore
from modelgate.storage.errors import KeyUnavailable
from modelgate.storage.keys import check_key_file

FAILURES_PER_MINUTE = 30
_DIGEST = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
Scope = Literal["inference", "admin", "any"]


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    admin: bool
    models: frozenset[str] | None  # None: every model
    limits: KeyLimits | None = field(default=None, compare=False)  # None: unlimited
    expires_at: float | None = None  # epoch seconds; None: never

    def may_use(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models


ANONYMOUS = Principal("anonymous", admin=True, models=None)


def _read_key_file(path: str, source: str) -> list[str]:
    try:
        text = check_key_file(path).read_text(encoding="utf-8")
    except KeyUnavailable as exc:
        raise ConfigError(f"{source}: API {exc.message}") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read key file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: key file {path} is not UTF-8 text") from exc
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class KeyStore:
    """Digests of the configured keys and what each may do."""

    def __init__(
        self, config: Config, previous: KeyStore | None = None, store: LimitStore | None = None
    ) -> None:
        # a reloaded store keeps the limits (and what was used of them) of every key
        # whose name and limits did not change
        self._kept = previous._limits if previous is not None else {}
        self._limits: dict[KeyPolicy, KeyLimits] = {}
        # where the keys' counts live (``modelgate.state``); a reload keeps it
        self.store: LimitStore = (
            store if store is not None else previous.store if previous is not None else MemoryStore()
        )
        self._failures: FailureThrottle = (
            previous._failures if previous is not None else FailureThrottle(FAILURES_PER_MINUTE)
        )
        self._trusted = parse_networks(config.server.trusted_proxies)
        # keyed once; each lookup copies the keyed state (cheaper than a fresh HMAC)
        self._mac = hmac.new(secrets.token_bytes(32), digestmod=hashlib.sha256)
        # digest prefix -> (full digest, principal): found by the prefix, then the whole
        # digest compared in constant time
        self._keys: dict[bytes, list[tuple[bytes, Principal]]] = {}
        auth: AuthConfig = config.auth
        self.enabled = auth.configured
        self._load(config, auth.api_keys, auth.api_keys_file, auth.api_keys_env, admin=False)
        self._load(config, auth.admin_keys, auth.admin_keys_file, auth.admin_keys_env, admin=True)
        if self.enabled and not self._keys:
            raise ConfigError(f"{config.source}: auth is configured but no key could be loaded")

    def _digest(self, key: str) -> bytes:
        # the HMAC of the key's SHA-256, so that a key configured as its digest
        # (``sha256:<hex>``) is found by the same lookup as one given in plaintext
        return self._keyed(hashlib.sha256(key.encode("utf-8")).digest())

    def _keyed(self, sha: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(sha)
        return mac.digest()

    def _add(self, key: str, principal: Principal, source: str) -> None:
        given = _DIGEST.match(key)
        if given is not None:
            digest = self._keyed(bytes.fromhex(given.group(1)))
        elif key.startswith("sha256:"):
            raise ConfigError(
                f"{source}: API key {principal.name!r}: a digest is 'sha256:' and 64 hex characters"
            )
        elif len(key) < 16:
            raise ConfigError(f"{source}: API key {principal.name!r} is shorter than 16 characters")
        else:
            digest = self._digest(key)
        self._keys.setdefault(digest[:8], []).append((digest, principal))

    def _load(
        self, config: Config, entries: Iterable[KeyEntry], file: str | None, env: str | None, *, admin: bool
    ) -> None:
        kind = "admin" if admin else "api"
        src = config.source
        for i, entry in enumerate(entries):
            if isinstance(entry, ApiKey):
                key = entry.key if entry.key is not None else config.secret(entry.key_env or "")
                scope = frozenset(entry.models) if entry.models is not None else None
                name = entry.name or f"{kind}-{i}"
                limits = None
                quota = entry.quota
                if entry.rpm or entry.tpm or entry.max_in_flight or quota is not None:
                    ident = KeyPolicy(
                        name,
                        entry.rpm,
                        entry.tpm,
                        entry.max_in_flight,
                        quota.daily_tokens if quota is not None else None,
                        quota.monthly_tokens if quota is not None else None,
                    )
                    limits = self._kept.get(ident) or KeyLimits(ident, self.store)
                    self._limits[ident] = limits
                expires = entry.expires
                if expires is not None and expires.tzinfo is None:
                    expires = expires.replace(tzinfo=UTC)
                expires_at = expires.timestamp() if expires is not None else None
                self._add(key, Principal(name, admin, scope, limits, expires_at), src)
            else:
                self._add(entry, Principal(f"{kind}-{i}", admin, None), src)
        if file:
            for i, key in enumerate(_read_key_file(file, src)):
                self._add(key, Principal(f"{kind}-file-{i}", admin, None), src)
        if env:
            for i, key in enumerate(k.strip() for k in config.secret(env).split(",") if k.strip()):
                self._add(key, Principal(f"{kind}-env-{i}", admin, None), src)

    def authenticate(
        self, header: str | None, client: str, *, scope: Scope, forwarded: str | None = None
    ) -> Principal:
        """The key's principal; ``client`` is the peer's address and ``forwarded`` its
        ``X-Forwarded-For`` (believed from ``server.trusted_proxies`` only), by which
        failures are throttled."""
        if not self.enabled:
            return ANONYMOUS
        token = None
        if header and header[:7].lower() == "bearer ":
            token = header[7:].strip()
        principal = self._lookup(token) if token else None
        if principal is None:
            self._fail(client, forwarded)
            raise AuthenticationFailed("Incorrect API key provided." if token else "Missing API key.")
        if principal.expires_at is not None and time.time() >= principal.expires_at:
            self._fail(client, forwarded)
            raise AuthenticationFailed("This API key has expired.")
        if scope == "admin" and not principal.admin:
            raise PermissionDenied("This key may not use the admin API.")
        if scope == "inference" and principal.admin:
            raise PermissionDenied("Admin keys may not be used for inference; use an API key.")
        return principal

    def names(self) -> list[str]:
        """Every key's name (the usage ledger's rows)."""
        return sorted({p.name for entries in self._keys.values() for _, p in entries} or {ANONYMOUS.name})

    @property
    def count(self) -> int:
        return sum(len(entries) for entries in self._keys.values())

    def describe(self) -> list[dict[str, object]]:
        """Every key as the admin view shows it: name, kind, scope, expiry, limits and
        their use; never the key or its digest."""
        rows = []
        for entries in self._keys.values():
            for _, p in entries:
                expires = p.expires_at
                rows.append(
                    {
                        "name": p.name,
                        "admin": p.admin,
                        "models": sorted(p.models) if p.models is not None else None,
                        "expires": datetime.fromtimestamp(expires, UTC).isoformat() if expires else None,
                        "expired": expires is not None and time.time() >= expires,
                        "limits": p.limits.describe() if p.limits is not None else None,
                    }
                )
        return sorted(rows, key=lambda r: (bool(r["admin"]), str(r["name"])))

    def limited(self) -> dict[str, dict[str, int]]:
        """Key name -> requests refused by each of its limits (keys with limits only)."""
        return {
            principal.name: principal.limits.refused
            for entries in self._keys.values()
            for _, principal in entries
            if principal.limits is not None
        }

    def _lookup(self, token: str) -> Principal | None:
        digest = self._digest(token)
        for known, principal in self._keys.get(digest[:8], ()):
            if hmac.compare_digest(known, digest):
                return principal
        return None

    def _fail(self, client: str, forwarded: str | None) -> None:
        """Count a failure against the client; past its allowance, 429 instead of 401."""
        address = client_address(client, forwarded, self._trusted)
        self._failures.check(address)
        self._failures.fail(address)

"""Failed authentications per client address, and which address a request is from.

A client address that failed ``limit`` times within a minute gets 429 for its
further failures until the oldest of them is a minute old.  Only failures are
throttled: a request with a valid key is never refused because others behind the
same address (a NAT, a load balancer) failed.  The table is bounded: past ``size``
addresses the least recently failed one is evicted, never the whole table.  An
IPv6 client counts by its /64, since one host may rotate through the addresses of
its prefix.

``client_address`` believes ``X-Forwarded-For`` only from the proxies named in
``server.trusted_proxies``: the client is the rightmost address in the header that
is not itself a trusted proxy.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from modelgate.errors import RateLimited

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def client_address(remote: str, forwarded: str | None, trusted: tuple[Network, ...]) -> str:
    """The address a request is from: the peer, or, when the peer is a trusted
    proxy, the rightmost untrusted address of its ``X-Forwarded-For``."""
    if not trusted or not forwarded:
        return remote
    peer = _address(remote)
    if peer is None or not any(peer in net for net in trusted):
        return remote
    hops = [h for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        ip = _address(hop)
        if ip is None:  # a hop we cannot read: what is left of it is not believable
            return str(peer)
        if not any(ip in net for net in trusted):
            return str(ip)
    first = _address(hops[0]) if hops else None  # every hop a trusted proxy
    return str(first or peer)


def throttle_key(client: str) -> str:
    """What failures are counted by: the address, or an IPv6 address's /64."""
    ip = _address(client)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return client


class FailureThrottle:
    """Failed authentications per client: at most ``limit`` a ``window``, for at most
    ``size`` clients (least recently failed evicted first)."""

    def __init__(
        self,
        limit: int = 30,
        window_s: float = 60.0,
        size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self._window = window_s
        self._size = size
        self._clock = clock
        self._table: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def check(self, client: str) -> None:
        """Raise ``RateLimited`` when ``client`` has failed too often lately."""
        times = self._table.get(throttle_key(client))
        if times is None or len(times) < self.limit:
            return
        now = self._clock()
        while times and now - times[0] >= self._window:
            times.popleft()
        if len(times) >= self.limit:
            raise RateLimited(
                "Too many failed authentication attempts.", retry_after=self._window - (now - times[0])
            )

    def fail(self, client: str) -> None:
        key = throttle_key(client)
        table = self._table
        times = table.get(key)
        if times is None:
            if len(table) >= self._size:
                table.popitem(last=False)  # the least recently failed
            times = table[key] = deque(maxlen=self.limit)
        else:
            table.move_to_end(key)
        times.append(self._clock())

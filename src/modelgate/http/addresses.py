"""What an address literally is: the forms a resolver accepts, and the addresses
where cloud metadata services answer, which are never upstreams: link-local
(169.254.0.0/16, fe80::/10: AWS, GCP, Azure, Oracle, OpenStack, DigitalOcean), AWS's
IPv6 endpoint ``fd00:ec2::254`` and Alibaba Cloud's ``100.100.100.200``."""

from __future__ import annotations

import ipaddress
import socket


def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names literally, in any notation a resolver accepts
    (``169.254.169.254``, ``2852039166``, ``0xa9.0xfe.0xa9.0xfe``, ``::ffff:a9fe:a9fe``);
    None for a name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:  # the legacy IPv4 forms that inet_aton (and so getaddrinfo) accepts
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# metadata services outside the link-local ranges
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("fd00:ec2::254"),  # AWS (IPv6, Nitro)
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)


def is_link_local(host: str) -> bool:
    """Link-local (169.254.0.0/16, fe80::/10: cloud metadata services live there)."""
    ip = ip_of(host)
    return ip is not None and ip.is_link_local


def is_metadata(host: str) -> bool:
    """Where a cloud metadata service may answer: link-local, or one of
    ``METADATA_ADDRESSES``, in any notation a resolver accepts."""
    ip = ip_of(host)
    return ip is not None and (ip.is_link_local or ip in METADATA_ADDRESSES)

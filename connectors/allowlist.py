"""IP allowlists of the hub's listeners (``allowed_networks:``).

A listener with ``allowed_networks: ["10.0.0.0/8", "127.0.0.1/32"]`` serves
only peers inside one of those networks; ``None`` (the default) allows every
peer. A refusal is logged with the peer address only and counted by the
listener that refused it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

__all__ = ["AllowedNetworks", "IPNetwork", "is_allowed"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

AllowedNetworks = Annotated[
    list[IPNetwork] | None,
    Field(
        min_length=1,
        description="networks (CIDR) peers may connect from; null allows any",
    ),
]


def is_allowed(networks: Sequence[IPNetwork] | None, address: str | None) -> bool:
    """True when ``address`` (an IP, e.g. a peer's) lies in one of ``networks``.

    No allowlist allows everyone; an address that is not an IP (a Unix socket,
    an unknown peer) is refused when there is one. An IPv4-mapped IPv6 address
    (``::ffff:10.1.2.3``, from a dual-stack socket) is checked as the IPv4 one.
    """
    if networks is None:
        return True
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)

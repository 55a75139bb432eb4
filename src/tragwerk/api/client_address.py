"""The client's address behind a proxy: TRAGWERK_TRUSTED_PROXIES and TRAGWERK_FORWARDED_HEADER.

Behind a gateway every connection comes from the gateway's address, so per-address
budgets, the failed-authentication throttle and the logs would treat everybody as one
client. The gateway names the client in `X-Forwarded-For` (or RFC 7239 `Forwarded`);
anybody else can send the same header, so it is honoured only when the connection
comes from a trusted proxy, and only the one header the proxy is configured to set:
a proxy that appends to `X-Forwarded-For` passes a client's own `Forwarded` header
through untouched, and reading that one would let the client choose its address.

The list is read from the right: each trusted hop is skipped, and the first address
that is not trusted is the client (hops left of it were written by the client or by
proxies we know nothing of). A hop that is not an address ("unknown", an obfuscated
name) ends the walk at the last trusted hop. `scope["client"]` is replaced, so every
later reader (rate limits, throttle, logs, routes) sees the derived address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.types import Scope

from tragwerk.settings import IPNetwork

_MAX_PEERS = 1024  # peers whose trust is remembered; a gateway tier has a handful


class ClientAddress:
    def __init__(self, trusted: Sequence[IPNetwork], header: str = "x-forwarded-for") -> None:
        self._trusted = tuple(trusted)
        self._header = header.lower().encode("latin-1")
        self._forwarded = header.lower() == "forwarded"
        self._peers: dict[str, bool] = {}

    def trusted(self, address: str) -> bool:
        known = self._peers.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address.split("%", 1)[0])
            except ValueError:
                known = False
            else:
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                known = any(ip in network for network in self._trusted)
            if len(self._peers) < _MAX_PEERS:
                self._peers[address] = known
        return known

    def resolve(self, scope: Scope) -> None:
        """Replace `scope["client"]` by the forwarded client when the peer is trusted."""
        peer = scope.get("client")
        if not peer or not self.trusted(str(peer[0])):
            return
        values = [bytes(v) for k, v in scope["headers"] if k == self._header]
        if not values:
            return  # the proxy's own request (a health check): the peer is the client
        text = b",".join(values).decode("latin-1")
        hops = _forwarded_for(text) if self._forwarded else text.split(",")
        client = str(peer[0])
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break
            client = address
            if not self.trusted(address):
                break
        scope["client"] = (client, 0)


def _forwarded_for(text: str) -> list[str]:
    """The `for=` value of each element of a Forwarded header (RFC 7239 section 4)."""
    hops = []
    for element in text.split(","):
        value = "unknown"  # an element without for= names no client
        for pair in element.split(";"):
            name, _, raw = pair.partition("=")
            if name.strip().lower() == "for":
                value = raw.strip()
        hops.append(value)
    return hops


def _address(hop: str) -> str | None:
    """The IP address in one hop ('192.0.2.1', '"[2001:db8::1]:4711"', '192.0.2.1:80')."""
    text = hop.strip().strip('"')
    if text.startswith("["):  # [IPv6] with an optional port
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None

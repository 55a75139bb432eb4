"""Refuse outbound connections to internal addresses, checked after DNS resolution.

A webhook URL is chosen by whoever may create subscriptions; without this guard it
could make tragwerk's workers call the cloud metadata service, a database port on the
private network or the worker's own loopback. The check runs when the connection is
made, on every address the name resolves to, and the connection then goes to the
checked address itself, so a name that resolves differently a moment later (DNS
rebinding) cannot slip past.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(Exception):
    """The destination resolves to an address that outbound calls may not reach."""


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are IPv4
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local use only


def refused_reason(address: IPAddress) -> str | None:  # noqa: PLR0911 - one per class
    """Why `address` may not be called, or None when it is a public address.

    IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4, Teredo) are judged by
    the IPv4 address they lead to: Python counts 64:ff9b::a9fe:a9fe as global, yet a
    NAT64 gateway turns it into 169.254.169.254.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return refused_reason(address.ipv4_mapped)
        if address in _NAT64_LOCAL:
            return "local-use NAT64"
        if address in _NAT64:
            return refused_reason(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None:
            return refused_reason(address.sixtofour)
        if address.teredo is not None:
            server, client = address.teredo
            return refused_reason(client) or refused_reason(server)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (includes cloud metadata services)"
    if address.is_private:
        return "private network"
    if address.is_multicast or address.is_reserved or address.is_unspecified:
        return "not a unicast public address"
    if not address.is_global:
        return "not globally routable"
    return None


class AddressGuard:
    """Resolves a host and returns the addresses a connection may use."""

    def __init__(self, allow_hosts: Iterable[str] = ()) -> None:
        self.allow_hosts = frozenset(h.strip().lower() for h in allow_hosts if h.strip())

    async def resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if host.lower() in self.allow_hosts:
            return addresses
        for text in addresses:
            reason = refused_reason(ipaddress.ip_address(text.split("%")[0]))
            if reason is not None:
                raise AddressRefused(
                    f"{host} resolves to {text} ({reason}); outbound calls there are refused "
                    "unless the host is listed in TRAGWERK_WEBHOOK_ALLOW_HOSTS"
                )
        return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the guard between name and connection.

    httpcore takes a network backend as a documented argument of its connection pool;
    every connection the pool opens is made here, so the guard cannot be bypassed by
    a change inside the client. (httpx offers no such argument: tragwerk calls
    webhooks through httpcore directly rather than replace a private part of httpx.)
    """

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._guard.resolve(host, port)
        last: Exception | None = None
        for address in addresses:
            try:
                # TLS still verifies `host`: httpcore passes the URL's host as the
                # server name when it starts TLS on this stream.
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address for {host}")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("unix sockets are not a webhook destination")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# What a call through the guarded pool can raise besides AddressRefused: httpcore's
# exceptions have no common base class.
CALL_ERRORS: tuple[type[Exception], ...] = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
)


def guarded_pool(guard: AddressGuard) -> httpcore.AsyncConnectionPool:
    """A connection pool whose every connection passes `guard`; no redirects, no proxies.

    httpcore follows no redirects (a receiver could otherwise bounce the call to an
    internal URL) and reads no proxy settings from the environment.
    """
    return httpcore.AsyncConnectionPool(
        ssl_context=ssl.create_default_context(),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        retries=0,
        network_backend=GuardedBackend(guard),
    )

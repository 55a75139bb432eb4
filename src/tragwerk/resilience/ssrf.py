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
from collections.abc import Iterable

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(Exception):
    """The destination resolves to an address that outbound calls may not reach."""


def refused_reason(address: IPAddress) -> str | None:  # noqa: PLR0911 - one per class
    """Why `address` may not be called, or None when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refused_reason(address.ipv4_mapped)
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


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the guard between name and connection."""

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


def guarded_client(guard: AddressGuard, timeout: httpx.Timeout) -> httpx.AsyncClient:
    """An httpx client whose every connection passes `guard`; no redirects, no proxies.

    Redirects are not followed: a receiver could otherwise bounce the call to an
    internal URL. Environment proxies are ignored for the same reason.
    """
    transport = httpx.AsyncHTTPTransport(retries=0)
    # httpx builds its httpcore pool without a network-backend argument; replace the
    # pool with one that has the guarded backend (same settings as httpx's defaults).
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=_GuardedBackend(guard),
    )
    return httpx.AsyncClient(
        transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
    )

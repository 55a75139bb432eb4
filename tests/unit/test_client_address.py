"""Which address is the client's behind proxies: pure logic on ASGI scopes."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tragwerk.api.client_address import ClientAddress

PROXIES = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("2001:db8:1::/48")]


def _scope(peer: str, *headers: tuple[str, str]) -> dict[str, Any]:
    return {
        "client": (peer, 50000),
        "headers": [(k.encode(), v.encode()) for k, v in headers],
    }


def _client(resolver: ClientAddress, scope: dict[str, Any]) -> str:
    resolver.resolve(scope)
    return str(scope["client"][0])


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("10.0.0.5", "203.0.113.9", "203.0.113.9"),  # one trusted proxy
        ("10.0.0.5", "203.0.113.9, 10.0.0.7", "203.0.113.9"),  # two trusted proxies
        ("10.0.0.5", "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # the client's own claim
        ("203.0.113.50", "198.51.100.1", "203.0.113.50"),  # not through a trusted proxy
        ("10.0.0.5", "10.0.0.8, 10.0.0.7", "10.0.0.8"),  # all trusted: the leftmost
        ("10.0.0.5", "unknown", "10.0.0.5"),  # not an address: the proxy's own
        ("10.0.0.5", "203.0.113.9, garbage", "10.0.0.5"),
        ("::ffff:10.0.0.5", "203.0.113.9", "203.0.113.9"),  # IPv4 peer on a dual socket
        ("2001:db8:1::5", "2001:db8:99::1", "2001:db8:99::1"),
    ],
)
def test_x_forwarded_for_is_read_from_the_right(peer: str, forwarded_for: str, client: str) -> None:
    resolver = ClientAddress(PROXIES)
    assert _client(resolver, _scope(peer, ("x-forwarded-for", forwarded_for))) == client


def test_several_header_lines_are_one_list_in_order() -> None:
    resolver = ClientAddress(PROXIES)
    scope = _scope(
        "10.0.0.5", ("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "203.0.113.9")
    )
    assert _client(resolver, scope) == "203.0.113.9"


def test_without_the_header_the_peer_is_the_client() -> None:
    assert _client(ClientAddress(PROXIES), _scope("10.0.0.5")) == "10.0.0.5"


def test_only_the_configured_header_is_read() -> None:
    """A proxy that sets X-Forwarded-For passes a client's own Forwarded header on."""
    xff = ClientAddress(PROXIES)
    scope = _scope(
        "10.0.0.5", ("forwarded", "for=198.51.100.66"), ("x-forwarded-for", "203.0.113.9")
    )
    assert _client(xff, scope) == "203.0.113.9"
    forwarded = ClientAddress(PROXIES, "forwarded")
    scope = _scope("10.0.0.5", ("x-forwarded-for", "198.51.100.66"))
    assert _client(forwarded, scope) == "10.0.0.5"


@pytest.mark.parametrize(
    ("value", "client"),
    [
        ("for=203.0.113.9", "203.0.113.9"),
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ("for=203.0.113.9:8080;proto=https", "203.0.113.9"),
        ("for=198.51.100.1, for=203.0.113.9;by=10.0.0.5", "203.0.113.9"),
        ("for=203.0.113.9, for=10.0.0.7", "203.0.113.9"),
        ("for=_hidden", "10.0.0.5"),
        ("proto=https", "10.0.0.5"),  # names no client
    ],
)
def test_forwarded_elements_are_read_from_the_right(value: str, client: str) -> None:
    resolver = ClientAddress(PROXIES, "forwarded")
    assert _client(resolver, _scope("10.0.0.5", ("forwarded", value))) == client

"""The SSRF guard on real sockets: refused before any connection, allowed when listed."""

from __future__ import annotations

import httpx
import pytest

from tests.receivers import WebhookReceiver
from tragwerk.resilience.ssrf import AddressGuard, AddressRefused, guarded_client

TIMEOUT = httpx.Timeout(2.0)


async def test_loopback_is_refused_before_connecting() -> None:
    with WebhookReceiver() as receiver:
        async with guarded_client(AddressGuard(), TIMEOUT) as client:
            for url in (receiver.url(), f"http://localhost:{receiver.port}/"):
                with pytest.raises(AddressRefused):
                    await client.post(url, content=b"{}")
        assert receiver.received == []


async def test_listed_hosts_are_allowed_and_redirects_are_not_followed() -> None:
    with WebhookReceiver(lambda _n: (302, {"Location": "http://169.254.169.254/"}, 0)) as rx:
        async with guarded_client(AddressGuard(["127.0.0.1"]), TIMEOUT) as client:
            response = await client.post(rx.url(), content=b"{}")
        assert response.status_code == 302
        assert len(rx.received) == 1


async def test_unresolvable_names_are_connection_errors() -> None:
    async with guarded_client(AddressGuard(), TIMEOUT) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("http://no-such-host.invalid/", content=b"{}")

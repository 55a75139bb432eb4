"""The SSRF guard on real sockets: refused before any connection, allowed when listed."""

from __future__ import annotations

import httpcore
import pytest

from tests.receivers import WebhookReceiver
from tragwerk.resilience.ssrf import AddressGuard, AddressRefused, guarded_pool

TIMEOUT = {"timeout": {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}}


async def test_loopback_is_refused_before_connecting() -> None:
    with WebhookReceiver() as receiver:
        async with guarded_pool(AddressGuard()) as pool:
            for url in (
                receiver.url(),
                f"http://localhost:{receiver.port}/",
                f"http://[::ffff:127.0.0.1]:{receiver.port}/",
            ):
                with pytest.raises(AddressRefused):
                    await pool.request("POST", url, content=b"{}", extensions=TIMEOUT)
        assert receiver.received == []


async def test_listed_hosts_are_allowed_and_redirects_are_not_followed() -> None:
    with WebhookReceiver(lambda _n: (302, {"Location": "http://169.254.169.254/"}, 0)) as rx:
        async with guarded_pool(AddressGuard(["127.0.0.1"])) as pool:
            response = await pool.request("POST", rx.url(), content=b"{}", extensions=TIMEOUT)
        assert response.status == 302
        assert len(rx.received) == 1


async def test_unresolvable_names_are_connection_errors() -> None:
    async with guarded_pool(AddressGuard()) as pool:
        with pytest.raises(httpcore.ConnectError):
            await pool.request(
                "POST", "http://no-such-host.invalid/", content=b"{}", extensions=TIMEOUT
            )


async def test_every_connection_the_pool_opens_goes_through_the_guard() -> None:
    """Fails closed: if the pool ever stopped using the backend it was given, the
    connection to the listed receiver would not be counted here."""
    seen: list[str] = []

    class Counting(AddressGuard):
        async def resolve(self, host: str, port: int) -> list[str]:
            seen.append(host)
            return await super().resolve(host, port)

    with WebhookReceiver() as rx:
        async with guarded_pool(Counting(["127.0.0.1"])) as pool:
            for _ in range(3):
                response = await pool.request(
                    "POST",
                    rx.url(),
                    content=b"{}",
                    headers={"Connection": "close"},
                    extensions=TIMEOUT,
                )
                assert response.status == 200
    assert seen == ["127.0.0.1"] * 3

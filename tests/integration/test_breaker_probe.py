"""The half-open probe of a webhook host is given back on every outcome (real receiver)."""

from __future__ import annotations

import pytest

from tests.receivers import WebhookReceiver
from tragwerk.jobs.outcome import Permanent, Retryable
from tragwerk.jobs.webhooks import Deliverer
from tragwerk.resilience.breaker import BreakerState, CircuitBreakers
from tragwerk.resilience.ssrf import AddressGuard

JOB = {
    "body": "{}",
    "event_id": "e-1",
    "event_type": "case.created",
    "subscription_id": 1,
}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("probe_answer", [429, 408, 425])
async def test_a_probe_answered_without_a_verdict_does_not_block_the_host(
    probe_answer: int,
) -> None:
    answers = {0: (500, {}, 0.0), 1: (probe_answer, {}, 0.0)}
    clock = Clock()
    breakers = CircuitBreakers(threshold=1, open_seconds=2, clock=clock)
    with WebhookReceiver(lambda n: answers.get(n, (200, {}, 0.0))) as receiver:
        deliverer = Deliverer(AddressGuard(["127.0.0.1"]), breakers, 2.0, 2.0, 60.0)
        try:
            with pytest.raises(Retryable):
                await deliverer.deliver(receiver.url(), "s", JOB)  # 500: the circuit opens
            assert breakers.state("127.0.0.1") is BreakerState.OPEN
            clock.now = 3
            with pytest.raises(Retryable):
                await deliverer.deliver(receiver.url(), "s", JOB)  # the probe: 429 and co.
            # Before, the probe slot stayed taken and every later call was refused.
            assert await deliverer.deliver(receiver.url(), "s", JOB) == 200
        finally:
            await deliverer.close()
    assert len(receiver.received) == 3


async def test_a_probe_refused_by_the_ssrf_guard_does_not_block_the_host() -> None:
    clock = Clock()
    breakers = CircuitBreakers(threshold=1, open_seconds=2, clock=clock)
    breakers.before_call("localhost")
    breakers.failed("localhost")
    clock.now = 3
    deliverer = Deliverer(AddressGuard(), breakers, 2.0, 2.0, 60.0)
    try:
        for _ in range(2):  # refused by the guard each time, never by a stuck breaker
            with pytest.raises(Permanent, match="refused"):
                await deliverer.deliver("http://localhost:9/", "s", JOB)
    finally:
        await deliverer.close()

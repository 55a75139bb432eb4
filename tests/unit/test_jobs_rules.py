"""Pure rules of asynchronous processing: priorities, retries, Retry-After, breaker, SSRF."""

from __future__ import annotations

import ipaddress
import random
import typing
from datetime import UTC, datetime, timedelta

import pytest

from tragwerk.api.schemas import EventName
from tragwerk.domain.cases import Priority
from tragwerk.domain.events import (
    PRIORITY_SLA_AT_RISK,
    PRIORITY_SLA_BREACHED,
    EventType,
    RetryPolicy,
    job_priority,
    retry_after_seconds,
    status_is_retryable,
)
from tragwerk.jobs.outcome import Deferred, Retryable, decide
from tragwerk.jobs.webhooks import sign
from tragwerk.resilience.breaker import BreakerOpen, BreakerState, CircuitBreakers
from tragwerk.resilience.ssrf import refused_reason

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_sla_events_outrank_every_case_priority() -> None:
    overdue = NOW - timedelta(days=3)
    most_urgent = max(
        job_priority(t, p, overdue, NOW)
        for t in EventType
        for p in Priority
        if t not in {EventType.SLA_AT_RISK, EventType.SLA_BREACHED}
    )
    assert PRIORITY_SLA_BREACHED > PRIORITY_SLA_AT_RISK > most_urgent


def test_priority_follows_case_priority_then_time_left() -> None:
    far = NOW + timedelta(days=30)
    ranks = [
        job_priority(EventType.CASE_UPDATED, p, far, NOW)
        for p in (Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.CRITICAL)
    ]
    assert ranks == sorted(ranks)
    assert len(set(ranks)) == 4
    soon = job_priority(EventType.CASE_UPDATED, Priority.NORMAL, NOW + timedelta(hours=2), NOW)
    later = job_priority(EventType.CASE_UPDATED, Priority.NORMAL, NOW + timedelta(hours=50), NOW)
    assert soon > later
    # urgency never lifts a case above the next priority's base
    overdue = job_priority(EventType.CASE_UPDATED, Priority.NORMAL, NOW - timedelta(days=9), NOW)
    assert overdue < job_priority(EventType.CASE_UPDATED, Priority.HIGH, far, NOW)


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = RetryPolicy(max_attempts=5, base_seconds=2, cap_seconds=60)
    rng = random.Random(1)
    delays = [policy.delay(a, rng).total_seconds() for a in range(10)]
    for attempt, delay in enumerate(delays):
        ceiling = min(60, 2 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(policy.delay(3, rng).total_seconds(), 6) for _ in range(20)}) > 1
    assert not policy.gives_up_after(3)
    assert policy.gives_up_after(4)


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (500, True),
        (503, True),
        (599, True),
        (408, True),
        (425, True),
        (429, True),
        (400, False),
        (401, False),
        (404, False),
        (410, False),
        (422, False),
        (301, False),
    ],
)
def test_which_statuses_are_retried(status: int, retry: bool) -> None:
    assert status_is_retryable(status) is retry


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_seconds("120", NOW, 3600) == 120
    assert retry_after_seconds("999999", NOW, 3600) == 3600
    assert retry_after_seconds("Wed, 25 Nov 2026 12:00:30 GMT", NOW, 3600) == 30
    assert retry_after_seconds("Wed, 25 Nov 2026 11:00:00 GMT", NOW, 3600) == 0
    for bad in (None, "", "soon", "-5", "1.5"):
        assert retry_after_seconds(bad, NOW, 3600) is None


def test_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    import hashlib
    import hmac

    body = b'{"id":"e"}'
    expected = hmac.new(b"secret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("secret", 1_700_000_000, body) == f"t=1700000000,v1={expected}"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_repeated_failures_then_lets_one_probe_through() -> None:
    clock = Clock()
    breakers = CircuitBreakers(threshold=3, open_seconds=10, clock=clock)
    for _ in range(2):
        breakers.before_call("h")
        breakers.failed("h")
    assert breakers.state("h") is BreakerState.CLOSED
    breakers.before_call("h")
    breakers.failed("h")
    assert breakers.state("h") is BreakerState.OPEN
    with pytest.raises(BreakerOpen) as refused:
        breakers.before_call("h")
    assert refused.value.retry_in == pytest.approx(10)
    breakers.before_call("other")  # other hosts are not affected
    clock.now = 10.5
    assert breakers.state("h") is BreakerState.HALF_OPEN
    breakers.before_call("h")  # the probe
    with pytest.raises(BreakerOpen):
        breakers.before_call("h")  # only one at a time
    breakers.failed("h")  # probe failed: open again for the full period
    with pytest.raises(BreakerOpen):
        breakers.before_call("h")
    clock.now = 21
    breakers.before_call("h")
    breakers.succeeded("h")
    assert breakers.state("h") is BreakerState.CLOSED
    breakers.before_call("h")
    assert breakers.open_hosts() == 0


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("fe80::1", True),
        ("fd00::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.0.0.1", True),
        ("0.0.0.0", True),
        ("100.64.0.1", True),  # carrier-grade NAT
        ("224.0.0.1", True),
        ("93.184.216.34", False),
        ("2606:2800:220:1::1", False),
        # IPv6 forms that lead to an IPv4 address are judged by that address.
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 to 169.254.169.254
        ("64:ff9b::7f00:1", True),  # NAT64 to 127.0.0.1
        ("64:ff9b::5db8:d822", False),  # NAT64 to 93.184.216.34
        ("64:ff9b:1::a00:1", True),  # local-use NAT64
        ("2002:a9fe:a9fe::1", True),  # 6to4 of 169.254.169.254
        ("2002:0a00:0001::1", True),  # 6to4 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", True),  # Teredo, client 127.0.0.1
    ],
)
def test_ssrf_guard_classifies_addresses(address: str, refused: bool) -> None:
    assert (refused_reason(ipaddress.ip_address(address)) is not None) is refused


def test_subscription_event_names_are_the_domain_events() -> None:
    assert set(typing.get_args(EventName)) == {"*"} | {t.value for t in EventType}


def test_a_probe_without_a_verdict_gives_its_slot_back() -> None:
    clock = Clock()
    breakers = CircuitBreakers(threshold=1, open_seconds=5, clock=clock)
    breakers.before_call("h")
    breakers.failed("h")
    clock.now = 6
    breakers.before_call("h")  # the probe: answered 429, refused by the guard, cancelled
    breakers.release("h")
    breakers.before_call("h")  # the next call may probe; before, it was refused for good
    breakers.release("h")
    breakers.release("unknown host")  # nothing to give back: no error


def test_a_breaker_refusal_is_deferred_with_jitter_and_not_counted() -> None:
    policy = RetryPolicy(max_attempts=3)
    # Even on what would be the last attempt, a refusal neither holds nor counts.
    decisions = [decide(Deferred("circuit open", after=2.0), 2, policy) for _ in range(200)]
    assert all(not d.counted for d in decisions)
    waits = [d.retry_in.total_seconds() for d in decisions if d.retry_in is not None]
    assert len(waits) == 200
    assert all(2.0 <= w <= 3.0 for w in waits)
    assert max(waits) - min(waits) > 0.5  # spread out, not one stampede at the probe
    # A real failure on the last attempt is held, as before.
    assert decide(Retryable("503"), 2, policy).retry_in is None

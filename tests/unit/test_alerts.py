"""Alert states without Prometheus: pending, firing, repeat, resolved; claims across
processes; Alertmanager's webhook format."""

from __future__ import annotations

import pytest

from tragwerk.monitoring.alerts import ZERO_TIME, AlertBook, Condition
from tragwerk.monitoring.notify import FallbackClaims, MemoryClaims

DOWN = Condition(
    "TragwerkModuleDown",
    {"severity": "critical", "module": "store"},
    {"summary": "Module store has been failing for 30 s", "runbook": "docs/runbook.md#x"},
    for_seconds=30,
)
HELD = Condition("TragwerkJobsHeld", {"severity": "warning", "kind": "email"}, {"summary": "2"})


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def book(clock: Clock) -> AlertBook:
    return AlertBook({"critical": 3600, "warning": 14400}, clock=clock)


def test_pending_until_for_then_firing_then_repeated_then_resolved_once() -> None:
    clock = Clock()
    alerts = book(clock)
    assert alerts.evaluate([DOWN]) == []  # pending
    clock.now += 29
    assert alerts.evaluate([DOWN]) == []
    clock.now += 1
    (fired,) = alerts.evaluate([DOWN])
    assert fired.subject == "[FIRING:1] TragwerkModuleDown"
    fired.alerts[0].notified_at = clock.now  # as claimed() does
    clock.now += 3599
    assert alerts.evaluate([DOWN]) == []
    clock.now += 1
    (repeated,) = alerts.evaluate([DOWN])
    repeated.alerts[0].notified_at = clock.now
    clock.now += 15
    (resolved,) = alerts.evaluate([])
    assert resolved.subject == "[RESOLVED] TragwerkModuleDown"
    assert resolved.status == "resolved"
    assert alerts.evaluate([]) == []  # told once


def test_a_condition_that_ends_while_pending_is_never_notified() -> None:
    clock = Clock()
    alerts = book(clock)
    alerts.evaluate([DOWN])
    clock.now += 20
    assert alerts.evaluate([]) == []
    clock.now += 20
    assert alerts.evaluate([DOWN]) == []  # pending afresh, from now


def test_alerts_of_one_name_are_grouped_in_one_notification() -> None:
    clock = Clock()
    alerts = book(clock)
    other = Condition("TragwerkJobsHeld", {"severity": "warning", "kind": "webhook"}, {})
    notifications = alerts.evaluate([HELD, other, DOWN])
    assert [(n.alertname, len(n.alerts)) for n in notifications] == [("TragwerkJobsHeld", 2)]
    body = notifications[0].body("tragwerk", "http://tragwerk:8000")
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["groupLabels"] == {"alertname": "TragwerkJobsHeld"}
    assert body["commonLabels"] == {"alertname": "TragwerkJobsHeld", "severity": "warning"}
    assert body["alerts"][0]["labels"] == {
        "alertname": "TragwerkJobsHeld",
        "severity": "warning",
        "kind": "email",
    }
    assert body["alerts"][0]["endsAt"] == ZERO_TIME
    assert body["alerts"][0]["startsAt"] == "2027-01-15T08:00:00Z"
    assert len(body["alerts"][0]["fingerprint"]) == 16


async def test_of_two_processes_one_sends_each_notification() -> None:
    clock = Clock()
    shared = MemoryClaims(clock=clock)
    first, second = book(clock), book(clock)
    sent: list[tuple[str, str]] = []
    for _ in range(3):  # three evaluation rounds, 15 s apart, both processes
        for name, alerts in (("first", first), ("second", second)):
            for notification in alerts.evaluate([HELD]):
                mine = await alerts.claimed(notification, shared)
                if mine is not None:
                    sent.append((name, mine.status))
        clock.now += 15
    assert sent == [("first", "firing")]
    for name, alerts in (("second", second), ("first", first)):  # it ends
        for notification in alerts.evaluate([]):
            mine = await alerts.claimed(notification, shared)
            if mine is not None:
                sent.append((name, mine.status))
    assert sent == [("first", "firing"), ("second", "resolved")]
    # It happens again: a new episode is notified at once, not after the repeat interval.
    clock.now += 60
    for name, alerts in (("second", second), ("first", first)):
        for notification in alerts.evaluate([HELD]):
            mine = await alerts.claimed(notification, shared)
            if mine is not None:
                sent.append((name, mine.status))
    assert sent[-1] == ("second", "firing")
    assert len(sent) == 3


class Broken:
    async def claim(self, key: str, seconds: float) -> bool:
        raise ConnectionError("database down")

    async def release(self, key: str) -> None:
        raise ConnectionError("database down")


async def test_claims_fall_back_to_the_next_store_and_to_memory() -> None:
    second = MemoryClaims()
    claims = FallbackClaims(Broken(), second)
    assert await claims.claim("a:firing", 60)
    assert not await second.claim("a:firing", 60)  # it was claimed in the second store
    assert not await claims.claim("a:firing", 60)
    alone = FallbackClaims(Broken())
    assert await alone.claim("b", 60)
    assert not await alone.claim("b", 60)  # memory remembers
    await alone.release("b")
    assert await alone.claim("b", 60)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRAGWERK_ALERT_WEBHOOK_URL": "ftp://x"}, "must start with http"),
        ({"TRAGWERK_ALERT_EMAILS": "ops@example.test"}, "needs TRAGWERK_SMTP_URL"),
        (
            {"TRAGWERK_ALERT_EMAILS": "ops@example.test, a b@c", "TRAGWERK_SMTP_URL": "smtp://m"},
            "is not an address",
        ),
    ],
)
def test_alert_settings_are_checked(env: dict[str, str], message: str) -> None:
    from tragwerk.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_alert_settings_are_read() -> None:
    from tragwerk.settings import Settings

    settings = Settings.from_env(
        {
            "TRAGWERK_ALERT_EMAILS": "ops@example.test, oncall@example.test",
            "TRAGWERK_SMTP_URL": "smtp://mail:25",
            "TRAGWERK_ALERT_WEBHOOK_URL": "https://pager.example.test/hook",
        }
    )
    assert settings.alert_emails == ("ops@example.test", "oncall@example.test")
    assert settings.alert_repeat_critical_seconds == 3600


async def test_with_every_shared_store_down_only_the_leader_claims() -> None:
    leader = FallbackClaims(Broken(), leader=lambda: True)
    follower = FallbackClaims(Broken(), leader=lambda: False)
    assert await leader.claim("db:firing", 60)
    assert not await follower.claim("db:firing", 60)
    shared = MemoryClaims()
    follower_with_a_store = FallbackClaims(shared, leader=lambda: False)
    assert await follower_with_a_store.claim("x", 60)  # a store answered: no election

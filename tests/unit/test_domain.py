from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tragwerk.domain.cases import ALLOWED_TRANSITIONS, Priority, SlaPolicy, Status, check_transition
from tragwerk.domain.errors import InvalidTransition


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (Status.OPEN, Status.IN_PROGRESS),
        (Status.IN_PROGRESS, Status.WAITING),
        (Status.WAITING, Status.RESOLVED),
        (Status.RESOLVED, Status.CLOSED),
        (Status.CLOSED, Status.OPEN),  # reopen
        (Status.RESOLVED, Status.OPEN),  # reopen
    ],
)
def test_workflow_allows_forward_moves_and_reopen(current: Status, target: Status) -> None:
    check_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (Status.OPEN, Status.CLOSED),
        (Status.CLOSED, Status.RESOLVED),
        (Status.WAITING, Status.OPEN),
        (Status.OPEN, Status.OPEN),
    ],
)
def test_workflow_refuses_jumps_and_names_the_allowed_moves(
    current: Status, target: Status
) -> None:
    with pytest.raises(InvalidTransition) as err:
        check_transition(current, target)
    for allowed in ALLOWED_TRANSITIONS[current]:
        assert allowed.value in err.value.detail


def test_every_status_can_be_left() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(Status)
    assert all(ALLOWED_TRANSITIONS[s] for s in Status)


def test_sla_policy_defaults_and_override() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    policy = SlaPolicy.parse("critical=2, low=100")
    assert policy.due_at(Priority.CRITICAL, start) == start + timedelta(hours=2)
    assert policy.due_at(Priority.LOW, start) == start + timedelta(hours=100)
    assert policy.due_at(Priority.NORMAL, start) == start + timedelta(hours=72)


@pytest.mark.parametrize("text", ["urgent=3", "critical", "critical=-1", "high=abc"])
def test_sla_policy_refuses_bad_entries(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        SlaPolicy.parse(text)

"""The stop of `tragwerk api` / `tragwerk up` fits in one grace period (api.serving)."""

from __future__ import annotations

import pytest

from tragwerk.api.serving import grace_seconds, kill_timeout_seconds, starting_wait_seconds
from tragwerk.settings import Settings


@pytest.mark.parametrize("grace", [1.0, 3.0, 9.0, 30.0, 60.0, 300.0])
def test_the_wait_for_starting_workers_and_the_kill_timeout_share_the_grace(grace: float) -> None:
    settings = Settings(shutdown_grace_seconds=grace)
    total = grace_seconds(settings, with_worker=False)
    wait, kill = starting_wait_seconds(total), kill_timeout_seconds(total)
    assert total == max(1, round(grace))
    assert wait <= 10
    assert kill >= 1
    # Rounded to whole seconds for granian; never more than a second over the grace.
    assert wait + kill <= total + 1


@pytest.mark.parametrize(("grace", "jobs"), [(30.0, 20.0), (5.0, 20.0), (60.0, 5.0)])
def test_up_keeps_its_jobs_grace_inside_the_kill_timeout(grace: float, jobs: float) -> None:
    settings = Settings(shutdown_grace_seconds=grace, worker_grace_seconds=jobs)
    total = grace_seconds(settings, with_worker=True)
    assert kill_timeout_seconds(total) >= jobs + 5
    assert total >= grace

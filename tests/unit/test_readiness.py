"""The readiness probe answers from a check at most a second old, one check at a time."""

from __future__ import annotations

import asyncio

from tragwerk.api.readiness import ReadinessProbe


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_result_under_a_second_old_is_reused() -> None:
    clock = Clock()
    answers = iter(["ok", "failing: OSError"])

    async def check() -> str:
        return next(answers)

    probe = ReadinessProbe(check, clock=clock)
    assert await probe.database() == "ok"
    clock.now += 0.9
    assert await probe.database() == "ok"
    assert probe.checks == 1
    clock.now += 0.2
    assert await probe.database() == "failing: OSError"
    assert probe.checks == 2


async def test_calls_during_a_check_wait_for_it() -> None:
    release = asyncio.Event()

    async def check() -> str:
        await release.wait()
        return "ok"

    probe = ReadinessProbe(check, clock=Clock())
    waiting = [asyncio.ensure_future(probe.database()) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == ["ok"] * 50
    assert probe.checks == 1


async def test_a_caller_that_gives_up_does_not_cancel_the_check() -> None:
    release = asyncio.Event()

    async def check() -> str:
        await release.wait()
        return "ok"

    probe = ReadinessProbe(check, clock=Clock())
    impatient = asyncio.ensure_future(probe.database())
    await asyncio.sleep(0)
    impatient.cancel()
    patient = asyncio.ensure_future(probe.database())
    await asyncio.sleep(0)
    release.set()
    assert await patient == "ok"
    assert probe.checks == 1

"""A background loop stops when the gateway stops, even if one cancellation is lost.

On Python 3.11 a cancellation that meets ``asyncio.timeout`` firing at the same moment
comes out as ``TimeoutError``; the quota gauges' loop took it for a failed refresh and
carried on, and ``close`` waited for it forever: a gateway that could not take its
ext_proc port (exit 2 expected) hung in its shutdown instead, SIGTERM and all.
"""

from __future__ import annotations

import asyncio

from extproc import background
from extproc.config.metrics_model import QuotaGaugesConfig
from extproc.config.quota_model import QuotasConfig
from extproc.quota.rules import RuleSet
from extproc.telemetry.quota_gauges import QuotaGauges

# A guard so a regression fails instead of hanging the suite (not a measure of speed).
NEVER_S = 30.0


class SwallowingGauges(QuotaGauges):
    """Gauges whose refresh turns the first cancellation into a timeout, as 3.11's
    asyncio.timeout does when the two coincide."""

    def __init__(self) -> None:
        settings = QuotaGaugesConfig(refresh_interval_s=0.05)
        super().__init__(None, "t:", lambda: RuleSet(QuotasConfig()), lambda: 0.0, settings)
        self.refreshing = asyncio.Event()
        self.swallowed = 0

    async def refresh(self) -> None:
        self.refreshing.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
            raise TimeoutError from None


async def test_the_quota_gauges_stop_though_a_cancellation_was_swallowed() -> None:
    gauges = SwallowingGauges()
    gauges.start()
    await gauges.refreshing.wait()
    await asyncio.wait_for(gauges.close(), NEVER_S)
    assert gauges.swallowed == 1


async def test_stop_ends_a_loop_that_carries_on_after_every_failed_round() -> None:
    failed_rounds = asyncio.Event()

    async def loop() -> None:
        while True:
            try:
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(1)
            except TimeoutError:
                failed_rounds.set()
            await asyncio.sleep(0)

    task = asyncio.create_task(loop())
    await failed_rounds.wait()
    await asyncio.wait_for(background.stop(task), NEVER_S)
    assert task.done()


async def test_stop_of_nothing_or_a_finished_task_returns() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await background.stop(task)
    await background.stop(None)
    assert task.done()

"""Stopping the gateway's background loops (refreshers, listeners, clocks) for good.

Each loop is a task that runs until it is cancelled, carrying on after a failed round
(``except Exception``) so that a store or a provider that is down for a while does not
end it. On Python 3.11, one cancellation can be lost on its way in: a cancel that meets
``asyncio.timeout`` (or ``wait_for``) firing at the same moment comes out as the
timeout's ``TimeoutError``, which the loop takes for a failed round and carries on. A
``close`` that cancelled once and waited then waited forever: a gateway that could not
take its port never exited (its quota gauges' loop was refreshing at that moment).
``stop`` cancels again until the task has ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

# How long each cancellation is given before the next: a loop ends at its next await.
_RECANCEL_INTERVAL_S = 0.1


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` until it has ended, and wait for it (its error, if any, is dropped)."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL_INTERVAL_S)
    if not task.cancelled():
        task.exception()  # read, so asyncio does not log it as never retrieved

"""Quota counters in Redis: one round trip to check and reserve, one to settle.

Each subject's counters are checked and reserved by one Lua script (atomic on
the server, so concurrent requests on any number of replicas cannot all pass
the same check); several subjects go in one pipeline. Windows are computed
from the Redis server's clock: the offset between it and this process's clock
is measured at start and refreshed in the background, so replicas with skewed
clocks still agree on window boundaries without a TIME call per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError

from extproc.quota.rules import Limit
from extproc.store.scripts import script_source

log = logging.getLogger(__name__)
CLOCK_SYNC_INTERVAL_S = 30.0
SETTLE_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Reservation:
    limits: list[Limit]
    reserved: list[int]
    used: list[int]  # after reserving
    # The limits in force: the config's, or an operator's override.
    effective: list[int]


@dataclass(frozen=True, slots=True)
class Denial:
    limit: Limit
    used: int
    effective_limit: int


@dataclass(slots=True)
class _Scripts:
    reserve: str = ""
    settle: str = ""
    sources: dict[str, str] = field(default_factory=dict)


class QuotaStore:
    def __init__(self, client: Any, key_prefix: str) -> None:
        self._client = client
        self._prefix = key_prefix
        self._offset = 0.0
        self._scripts = _Scripts(
            sources={name: script_source(f"quota_{name}") for name in ("reserve", "settle")}
        )
        self._pending: set[asyncio.Task[None]] = set()
        self._clock: asyncio.Task[None] | None = None

    def now(self) -> float:
        """The Redis server's time, as this process estimates it."""
        return time.time() + self._offset

    async def start(self) -> None:
        # A store that is down at start-up must not stop the server: readiness
        # reports it, and the clock and scripts follow once it answers.
        try:
            await self._load_scripts()
            await self._sync_clock()
        except Exception as exc:
            log.warning("quota store not reachable at start: %s", type(exc).__name__)
        self._clock = asyncio.get_running_loop().create_task(self._keep_clock())

    async def _load_scripts(self) -> None:
        self._scripts.reserve = await self._client.script_load(self._scripts.sources["reserve"])
        self._scripts.settle = await self._client.script_load(self._scripts.sources["settle"])

    async def _sync_clock(self) -> None:
        before = time.time()
        seconds, micros = await self._client.time()
        after = time.time()
        # The server read its clock somewhere in the round trip: assume the middle.
        self._offset = seconds + micros / 1e6 - (before + after) / 2

    async def _keep_clock(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_SYNC_INTERVAL_S)
            try:
                await self._sync_clock()
            except Exception as exc:
                log.warning("quota clock sync failed: %s", type(exc).__name__)

    async def reserve(self, limits: list[Limit], token_cost: int) -> Reservation | Denial:
        groups = _by_subject(limits)
        results = await self._run(
            "reserve",
            [
                (
                    [
                        group[0][1].overrides_key(self._prefix),
                        *(limit.key(self._prefix) for _, limit in group),
                    ],
                    [
                        value
                        for _, limit in group
                        for value in (
                            limit.limit,
                            1 if limit.kind == "r" else token_cost,
                            limit.window.ttl_seconds(self.now()),
                            1 if limit.enforce else 0,
                            limit.kind,
                            limit.override_field,
                        )
                    ],
                )
                for group in groups
            ],
        )
        reserved = [0] * len(limits)
        used = [0] * len(limits)
        effective = [limit.limit for limit in limits]
        denial: Denial | None = None
        admitted: list[list[tuple[int, Limit]]] = []
        for group, result in zip(groups, results, strict=True):
            if int(result[0]) == 0:
                index = int(result[1]) - 1
                denial = denial or Denial(group[index][1], int(result[2]), int(result[3]))
                continue
            admitted.append(group)
            for position, (original, _) in enumerate(group):
                reserved[original] = int(result[1 + position * 3])
                used[original] = int(result[2 + position * 3])
                effective[original] = int(result[3 + position * 3])
        if denial is not None:
            # Another subject refused: give back what this request took elsewhere.
            taken = [(limits[i], reserved[i]) for group in admitted for i, _ in group]
            await self.settle_now([(limit, -amount) for limit, amount in taken if amount])
            return denial
        return Reservation(limits, reserved, used, effective)

    def settle(self, reservation: Reservation, actual_tokens: int | None) -> None:
        """Correct token reservations with the real usage (None: release them), off the
        request path; request counters stay as counted at admission."""
        changes = [
            (limit, (actual_tokens - reserved) if actual_tokens is not None else -reserved)
            for limit, reserved in zip(reservation.limits, reservation.reserved, strict=True)
            if limit.kind == "t"
        ]
        changes = [(limit, delta) for limit, delta in changes if delta]
        if not changes:
            return
        task = asyncio.get_running_loop().create_task(self._settle_quietly(changes))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle_quietly(self, changes: list[tuple[Limit, int]]) -> None:
        try:
            await asyncio.wait_for(self.settle_now(changes), SETTLE_TIMEOUT_S)
        except Exception as exc:
            log.warning("quota settlement failed: %s", type(exc).__name__)

    async def settle_now(self, changes: list[tuple[Limit, int]]) -> None:
        groups = _by_subject([limit for limit, _ in changes])
        deltas = [delta for _, delta in changes]
        await self._run(
            "settle",
            [
                (
                    [limit.key(self._prefix) for _, limit in group],
                    [
                        value
                        for index, limit in group
                        for value in (deltas[index], limit.window.ttl_seconds(self.now()))
                    ],
                )
                for group in groups
            ],
        )

    async def _run(self, name: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """One pipelined EVALSHA per subject; reload the scripts once on NOSCRIPT."""
        for attempt in (0, 1):
            sha = getattr(self._scripts, name)
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for keys, args in calls:
                        pipe.evalsha(sha, len(keys), *keys, *args)
                    results: list[Any] = await pipe.execute()
                    return results
            except NoScriptError:
                if attempt:
                    raise
                await self._load_scripts()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            await asyncio.gather(self._clock, return_exceptions=True)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def _by_subject(limits: list[Limit]) -> list[list[tuple[int, Limit]]]:
    groups: dict[tuple[str, str], list[tuple[int, Limit]]] = {}
    for index, limit in enumerate(limits):
        groups.setdefault((limit.subject_kind, limit.subject), []).append((index, limit))
    return list(groups.values())

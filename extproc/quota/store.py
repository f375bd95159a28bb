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
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from extproc.quota.rules import Limit
from extproc.store.coalescing import CoalescingCaller
from extproc.store.scripts import script_source
from extproc.store.spool import Spool

log = logging.getLogger(__name__)
CLOCK_SYNC_INTERVAL_S = 30.0
SPOOL_REPLAY_INTERVAL_S = 2.0
SETTLE_TIMEOUT_S = 2.0
SETTLE_BATCH_S = 0.02
# How long a settled batch id is remembered, so a replayed batch is not counted twice.
BATCH_MEMORY_S = 7 * 86400


@dataclass(slots=True)
class Reservation:
    limits: list[Limit]
    reserved: list[int]
    used: list[int]  # after reserving
    # The limits in force: the config's, or an operator's override.
    effective: list[int]


@dataclass(frozen=True, slots=True)
class _ReserveCall:
    """One check-and-reserve script call: a subject's keys and arguments, and its limits."""

    keys: list[str]
    args: list[Any]
    limits: list[Limit]


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
    def __init__(
        self,
        client: Any,
        key_prefix: str,
        spool: Spool | None = None,
        on_spooled: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._prefix = key_prefix
        self._offset = 0.0
        self._scripts = _Scripts(
            sources={name: script_source(f"quota_{name}") for name in ("reserve", "settle")}
        )
        self._unsettled: dict[str, tuple[Limit, int]] = {}
        self._spool = spool
        self._on_spooled = on_spooled
        # A flush is waiting to gather the next few milliseconds' settlements.
        self._flush_due = False
        # Flushes not finished yet: shutdown waits for them (each holds its batch).
        self._flushes: set[asyncio.Task[None]] = set()
        self._clock: asyncio.Task[None] | None = None
        # Reservations arriving while one is in flight go out together (one pipeline);
        # one whose request gave up after it was sent is given back when it lands.
        self.reservations: CoalescingCaller[_ReserveCall, Any] = CoalescingCaller(
            self._run_reserve, on_abandoned=self._give_back_abandoned
        )

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
        last_sync = time.monotonic()
        while True:
            await asyncio.sleep(SPOOL_REPLAY_INTERVAL_S)
            try:
                if time.monotonic() - last_sync >= CLOCK_SYNC_INTERVAL_S:
                    await self._sync_clock()
                    last_sync = time.monotonic()
                await self.replay_spool()
            except Exception as exc:
                log.warning("quota store upkeep failed: %s", type(exc).__name__)

    async def reserve(self, limits: list[Limit], token_cost: int) -> Reservation | Denial:
        # A single server checks every subject in one script (atomic, no rollback);
        # a cluster needs one script per subject, since each lives in its own slot.
        groups = _by_subject(limits) if self._cluster else [list(enumerate(limits))]
        results = await self.reservations.call(
            [self._reserve_call([limit for _, limit in group], token_cost) for group in groups]
        )
        reserved = [0] * len(limits)
        used = [0] * len(limits)
        effective = [limit.limit for limit in limits]
        denial: Denial | None = None
        failure: Exception | None = None
        admitted: list[list[tuple[int, Limit]]] = []
        for group, result in zip(groups, results, strict=True):
            if isinstance(result, Exception):
                failure = failure or result
                continue
            if int(result[0]) == 0:
                index = int(result[1]) - 1
                denial = denial or Denial(group[index][1], int(result[2]), int(result[3]))
                continue
            admitted.append(group)
            for position, (original, _) in enumerate(group):
                reserved[original] = int(result[1 + position * 3])
                used[original] = int(result[2 + position * 3])
                effective[original] = int(result[3 + position * 3])
        if denial is not None or failure is not None:
            # Another subject refused, or its server failed: give back what this request
            # took elsewhere, off the request path (spooled if the store cannot take it).
            taken = [(limits[i], reserved[i]) for group in admitted for i, _ in group]
            self._queue_changes([(limit, -amount) for limit, amount in taken if amount])
            if denial is not None:
                return denial
            assert failure is not None
            raise failure
        return Reservation(limits, reserved, used, effective)

    def _reserve_call(self, limits: list[Limit], token_cost: int) -> _ReserveCall:
        now = self.now()
        return _ReserveCall(
            keys=[
                key
                for limit in limits
                for key in (limit.key(self._prefix), limit.overrides_key(self._prefix))
            ],
            args=[
                value
                for limit in limits
                for value in (
                    limit.limit,
                    1 if limit.kind == "r" else token_cost,
                    limit.window.ttl_seconds(now),
                    1 if limit.enforce else 0,
                    limit.kind,
                    limit.override_field,
                )
            ],
            limits=limits,
        )

    def _give_back_abandoned(self, calls: list[_ReserveCall], results: list[Any]) -> None:
        """A request gave up (its timeout, its client gone) after its reservation was
        sent: what the store reserved for it, requests and tokens, is given back."""
        changes: list[tuple[Limit, int]] = []
        for call, result in zip(calls, results, strict=True):
            if isinstance(result, Exception) or int(result[0]) == 0:
                continue  # nothing was reserved
            for position, limit in enumerate(call.limits):
                amount = int(result[1 + position * 3])
                if amount:
                    changes.append((limit, -amount))
        self._queue_changes(changes)

    def settle(self, reservation: Reservation, actual_tokens: int | None) -> None:
        """Correct token reservations with the real usage (None: release them), off the
        request path; request counters stay as counted at admission."""
        self._queue_changes(
            [
                (limit, (actual_tokens - reserved) if actual_tokens is not None else -reserved)
                for limit, reserved in zip(reservation.limits, reservation.reserved, strict=True)
                if limit.kind == "t"
            ]
        )

    def _queue_changes(self, changes: list[tuple[Limit, int]]) -> None:
        """Counter changes for the next settlement batch, merged by key."""
        for limit, delta in changes:
            if not delta:
                continue
            key = limit.key(self._prefix)
            known = self._unsettled.get(key)
            self._unsettled[key] = (limit, delta + (known[1] if known else 0))
        if self._unsettled and not self._flush_due:
            # Settlements of the next few milliseconds go out together: one pipeline
            # instead of one per request, at the cost of that much staleness.
            self._flush_due = True
            flush = asyncio.get_running_loop().create_task(self._flush_soon())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    async def _flush_soon(self) -> None:
        await asyncio.sleep(SETTLE_BATCH_S)
        self._flush_due = False
        await self.flush()

    async def flush(self) -> None:
        """Write the pending settlements; what the store does not take goes to the spool."""
        batch, self._unsettled = self._unsettled, {}
        if not batch:
            return
        changes = self._raw(list(batch.values()))
        batch_id = uuid.uuid4().hex
        try:
            await asyncio.wait_for(self._settle_raw(changes, batch_id), SETTLE_TIMEOUT_S)
        except asyncio.CancelledError:
            # Cut short: it may have landed or not; spooled under its id, it counts once.
            self._keep(changes, batch_id)
            raise
        except Exception as exc:
            log.warning("quota settlement failed, spooled: %s", type(exc).__name__)
            self._on_spooled()
            # fsync is disk I/O: off the event loop.
            await asyncio.to_thread(self._keep, changes, batch_id)

    def _keep(self, changes: list[tuple[str, str, int, int]], batch_id: str) -> None:
        if self._spool is None:
            return
        try:
            self._spool.append({"id": batch_id, "changes": changes})
        except OSError:
            log.exception("a quota settlement is lost: the spool cannot be written")

    async def replay_spool(self) -> int:
        """Settlements the store missed, in order; each batch counts once."""
        if self._spool is None:
            return 0

        async def apply(record: dict[str, Any]) -> None:
            changes = [tuple(change) for change in record["changes"]]
            await asyncio.wait_for(self._settle_raw(changes, str(record["id"])), SETTLE_TIMEOUT_S)

        return await self._spool.replay(apply)

    async def settle_now(self, changes: list[tuple[Limit, int]]) -> None:
        """Apply changes at once (operators' adjustments, rollbacks), as one new batch."""
        await self._settle_raw(self._raw(changes), uuid.uuid4().hex)

    def _raw(self, changes: list[tuple[Limit, int]]) -> list[tuple[str, str, int, int]]:
        now = self.now()
        return [
            (limit.subject_tag, limit.key(self._prefix), delta, limit.window.ttl_seconds(now))
            for limit, delta in changes
        ]

    async def _settle_raw(self, changes: list[Any], batch_id: str) -> None:
        by_tag: dict[str, list[tuple[str, int, int]]] = {}
        for tag, key, delta, ttl in changes:
            by_tag.setdefault(tag, []).append((key, int(delta), int(ttl)))
        await self._run(
            "settle",
            [
                (
                    [f"{self._prefix}qs:{tag}:{batch_id}", *(key for key, _, _ in group)],
                    [
                        BATCH_MEMORY_S,
                        *(value for _, delta, ttl in group for value in (delta, ttl)),
                    ],
                )
                for tag, group in by_tag.items()
            ],
        )

    async def _run_reserve(self, calls: list[_ReserveCall]) -> list[Any]:
        # Each caller learns of its own calls' errors: one subject's server failing
        # does not fail (and leak) the reservations the other calls made.
        return await self._run("reserve", [(call.keys, call.args) for call in calls], True)

    async def _run(
        self, name: str, calls: list[tuple[list[str], list[Any]]], errors_as_results: bool = False
    ) -> list[Any]:
        """One pipelined EVALSHA per subject; calls that met NOSCRIPT are sent again once
        the scripts are reloaded. With ``errors_as_results``, a call's error is its result;
        otherwise the first error is raised."""
        if len(calls) == 1:
            # One subject: a plain EVALSHA, without a pipeline's overhead.
            keys, args = calls[0]
            try:
                return [await self._evalsha(name, keys, args)]
            except NoScriptError:
                await self._load_scripts()
                return [await self._evalsha(name, keys, args)]
        results = await self._pipeline(name, calls)
        missing = [
            index for index, result in enumerate(results) if isinstance(result, NoScriptError)
        ]
        if missing:
            # A server that lost its scripts (restarted, failed over) ran none of these
            # calls; the others ran, and must not run again.
            try:
                await self._load_scripts()
                again = await self._pipeline(name, [calls[index] for index in missing])
            except Exception as exc:
                if not errors_as_results:
                    raise
                # Only these calls failed: the others' answers stand (and are given
                # back by their callers if they must be).
                again = [exc] * len(missing)
            for index, result in zip(missing, again, strict=True):
                results[index] = result
        if not errors_as_results:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results

    async def _evalsha(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._client.evalsha(getattr(self._scripts, name), len(keys), *keys, *args)

    async def _pipeline(self, name: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        sha = getattr(self._scripts, name)
        async with self._client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                # Not pipe.evalsha(): redis-py refuses it in cluster pipelines; the raw
                # command is routed by its keys like any other.
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    async def close(self) -> None:
        await self.reservations.close()
        if self._clock is not None:
            self._clock.cancel()
            await asyncio.gather(self._clock, return_exceptions=True)
        # Not cancelled: a flush in progress holds the only copy of its batch.
        await asyncio.gather(*self._flushes, return_exceptions=True)
        await self.flush()


def _by_subject(limits: list[Limit]) -> list[list[tuple[int, Limit]]]:
    groups: dict[tuple[str, str], list[tuple[int, Limit]]] = {}
    for index, limit in enumerate(limits):
        groups.setdefault((limit.subject_kind, limit.subject), []).append((index, limit))
    return list(groups.values())

"""Quota counters in Redis: one round trip to check and reserve, one to settle.

Each subject's counters are checked and reserved by one Lua script (atomic on
the server, so concurrent requests on any number of replicas cannot all pass
the same check); several subjects go in one pipeline. Windows are computed
from the Redis server's clock: the offset between it and this process's clock
is measured at start and refreshed in the background, so replicas with skewed
clocks still agree on window boundaries without a TIME call per request.

Every reserve call carries an id: the script records what the call reserved
under it (for ``CALL_MEMORY_S``), so a call whose answer never came (a
connection cut, a timeout) is given back by its id, exactly, whether it ran or
not, and a call that arrives after that reserves nothing. Round trips go out
once, on one connection (``extproc/store/cluster_calls.py``), on a single
server as on each node of a cluster: a call the store never saw (a refused
connection) is told apart from one sent without an answer. On a Redis Cluster,
each node gets its own pipeline and its own queue of reservations
(``extproc/store/cluster_calls.py``): a node that is down fails only the calls
it holds, never the others' answers, and holds up no request that has no
subject on it.

A reservation can carry the claim of a record in its own round trip
(``reserve_unless_claimed``: the owner of an A2A task a message continues). The claim
runs first (``quota_claim.lua``); when another value holds the record, it gives back
the reserve calls behind it by their markers before they run, so nothing is counted.
On a cluster the record lives on another node than the counters: both go out at once,
and what was reserved is given back.

An operator's reset (``QuotaAdmin.reset``) deletes counters while requests
admitted before it are still running. Each limit has a reset generation (a
field of its subject's overrides hash, bumped by the reset in the same script
that deletes the counter); the reserve script returns the generation it saw,
and a settlement or give-back of that reservation is dropped by the store once
the generation has moved on: what the request reserved went with the reset, so
its correction must not come off the usage counted since.

Beside each token counter, a held amount (``<counter>:held``, same hash tag) counts
the part of it that requests still running hold: their reservations, not yet
settled. The counter counts them too (every limit is checked against settled usage
and reservations alike, as gateways of earlier versions sharing the store check
it); the held amount tells a budget that running requests hold, which frees up as
they settle, from one that is spent until its window resets. Each request's
settlement or give-back takes off exactly what it held, never below 0 (a counter
written before there was a held amount holds nothing).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from extproc import background
from extproc.config.quota_model import MAX_LIMIT
from extproc.quota.rules import Limit
from extproc.store.cluster_calls import ClusterCalls, ReplyLostError, send_once
from extproc.store.coalescing import CoalescingCaller
from extproc.store.outage_log import OutageLog
from extproc.store.scripts import script_source
from extproc.store.spool import Spool, refused_by_store

log = logging.getLogger(__name__)
CLOCK_SYNC_INTERVAL_S = 30.0
SPOOL_REPLAY_INTERVAL_S = 2.0
SETTLE_TIMEOUT_S = 2.0
SETTLE_BATCH_S = 0.02
# How long shutdown waits for a reservation round trip still in flight to answer.
RESERVE_CLOSE_GRACE_S = 5.0
# How long a settled batch id is remembered, so a replayed batch is not counted twice.
BATCH_MEMORY_S = 7 * 86400
# Subjects whose landed batch markers this process remembers, to delete them with
# their next settlement (a subject not settled again keeps its marker BATCH_MEMORY_S).
LANDED_MARKERS = 10_000
# How long what a reserve call reserved is remembered under its id: the give-back of a
# call whose answer was lost must reach its node within this time to be exact.
CALL_MEMORY_S = 30
# The longest a held amount is kept after the last reservation added to it (and never
# past its counter's window): longer than a request runs. A gateway that crashed with
# requests running never settles them, and their reservations would otherwise be told
# apart as held (a short wait) until the window ends; after this, they count as used.
HELD_MEMORY_S = 3600


@dataclass(slots=True)
class Reservation:
    limits: list[Limit]
    reserved: list[int]
    used: list[int]  # after reserving
    # The limits in force: the config's, or an operator's override.
    effective: list[int]
    # Each limit's reset generation when reserved: its settlement applies only while
    # no reset has started the counter again since.
    generations: list[int]
    # What this request holds of each limit (its token reservation, until it settles),
    # and what all running requests held of it after this one reserved.
    holding: list[int] = field(default_factory=list)
    held: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Built by hand (tools, tests) without them: nothing held.
        self.holding = self.holding or [0] * len(self.limits)
        self.held = self.held or [0] * len(self.limits)

    def entries(self) -> Iterator[tuple[Limit, int, int, int]]:
        """Each limit with what this request reserved of it, its reset generation, and
        what this request holds of it."""
        return zip(self.limits, self.reserved, self.generations, self.holding, strict=True)

    def held_before(self, index: int) -> int:
        """What other running requests held of limit ``index`` when this one reserved (at
        most its usage then: a grant while they ran can take the counter below it)."""
        before = self.used[index] - self.reserved[index]
        return min(max(0, self.held[index] - self.holding[index]), max(0, before))

    def settled_before(self, index: int) -> int:
        """What limit ``index`` counted as spent when this request reserved: its usage
        then, without what running requests held."""
        return self.used[index] - self.reserved[index] - self.held_before(index)


def held_key(counter: str) -> str:
    """The key of a counter's held amount: the counter's name and hash tag (its slot on a
    cluster), derived from it, so that a settlement spooled with its counter's name alone
    finds it."""
    return f"{counter}:held"


def generation_field(limit: Limit) -> str:
    """The field of the subject's overrides hash counting the resets of this limit.

    Override fields are ``<rule>:<counter>`` and no counter name ends in
    ``resets``, so this never names an override.
    """
    return f"{limit.override_field}:resets"


@dataclass(frozen=True, slots=True)
class PromptCost:
    """The prompt's part of a request's estimates: its tokens, and what they may cost in
    millionths of a dollar (the rest of each estimate is the answer's allowance)."""

    tokens: int
    usd_micros: int


@dataclass(frozen=True, slots=True)
class _Estimate:
    """A request's estimates, as reserved: ``tokens`` of each token limit, ``usd_micros``
    of each cost budget, ``prompt`` the prompt's part of both."""

    tokens: int
    usd_micros: int
    prompt: PromptCost


def capped_usd_micros(estimate: _Estimate, most: int) -> int:
    """What a cost budget holds of a request whose hard caps leave it ``most`` tokens, as
    the reserve script reckons it: the prompt's cost and the capped answer's share of
    the rest. An answer's cost grows with its tokens no faster than the whole
    allowance's did (the dearest of a failover chain's prices), so the share bounds what
    the lowered answer can cost."""
    cost, prompt = estimate.usd_micros, estimate.prompt
    allowance = estimate.tokens - prompt.tokens
    if most >= estimate.tokens or allowance <= 0 or cost <= prompt.usd_micros:
        return cost
    answer = max(most - prompt.tokens, 0)
    return min(cost, prompt.usd_micros + -(-(cost - prompt.usd_micros) * answer // allowance))


@dataclass(frozen=True, slots=True)
class _ReserveCall:
    """One check-and-reserve script call: a subject's keys and arguments, and its limits."""

    keys: list[str]  # the call's marker, then each limit's counter and overrides hash
    args: list[Any]
    limits: list[Limit]
    # "claim": a record claimed ahead of the reservation (``RecordClaim``), no limits.
    script: str = "reserve"

    @property
    def undo(self) -> _Undo:
        """What gives this call back by its id: its marker, its counters, and where
        their reset generations are (the overrides hash and field of each)."""
        fields = [generation_field(limit) for limit in self.limits]
        return self.keys[0], self.keys[1::3], self.keys[2::3], fields


# A give-back by call id (quota_undo.lua): the call's marker, its counters, and each
# counter's overrides hash and generation field (both empty in a record spooled by
# a version without generations: given back whatever the generation).
_Undo = tuple[str, list[str], list[str], list[str]]
# A counter change for the next settlement: its limit, the delta, the reset
# generation it belongs to (None: whatever the generation, as an operator's change),
# and what the settled requests held of it (taken off its held amount).
_Change = tuple[Limit, int, int | None, int]
# One script call in a round trip: the script's name, its keys and its arguments.
_ScriptCall = tuple[str, list[str], list[Any]]
# A settlement batch on its way: the counters whose held amounts it takes off, and a
# future done once it landed or went to the spool.
_Sending = tuple[frozenset[str], "asyncio.Future[None]"]
# A batch taken for sending: its changes by counter and generation, its give-backs, and
# how it is known to be on its way.
_Taken = tuple[dict[tuple[str, int | None], _Change], list[_Undo], _Sending]


@dataclass(frozen=True, slots=True)
class RecordClaim:
    """A record claimed in a reservation's own round trip (``reserve_unless_claimed``):
    ``value`` is written under ``key`` for ``ttl_s`` unless the key holds a value. When
    it holds another, the request is the record's holder's, not this caller's, and
    nothing is reserved for it."""

    key: str
    value: str
    ttl_s: int


@dataclass(frozen=True, slots=True)
class Denial:
    limit: Limit
    used: int
    effective_limit: int
    # Of ``used``, what requests still running hold (their reservations).
    held: int = 0
    # Every enforced limit that refused the request, this one among them: the stage
    # tells from them a prompt no hard-capped budget of theirs can ever take, without
    # asking the store again.
    refusals: tuple[Denial, ...] = ()
    # The enforced hard-capped token budgets that did not refuse, as they stood: one may
    # still be too small for this prompt (ever, or this period), a refusal that outlasts
    # the others, which the stage names instead.
    with_room: tuple[Denial, ...] = ()
    # No limit refused: the hard cap did. Of the budgets ``with_room``, one at least has
    # less left than this request's prompt and least answer (``reserve``'s ``room``), and
    # the store counted the request in no limit, requests_per_* included.
    too_short: bool = False

    @property
    def settled(self) -> int:
        """What the limit counts as spent: its usage without what running requests hold."""
        return max(0, self.used - self.held)

    @property
    def only_held(self) -> bool:
        """Refused for what running requests hold: their settlements free what they did
        not use, and a request may pass seconds later, long before the window resets."""
        return self.limit.is_budget and self.settled < self.effective_limit

    def wait(self, now: float) -> float:
        """How long the refusal holds, as far as the gateway can tell."""
        return refusal_wait(self.limit, now, held=self.only_held)


def refusal_wait(limit: Limit, now: float, *, held: bool) -> float:
    """How long a refusal by ``limit`` holds, as far as the gateway can tell: until its
    window resets (forever, for a lifetime quota), or the limit's held wait (a few seconds,
    ``quotas.held_retry_after_s``) when what running requests hold is all that stands in
    the way (``held``)."""
    left = limit.window.seconds_left(now)
    until_reset = math.inf if left is None else left
    return min(limit.held_retry_after, until_reset) if held else until_reset


_SCRIPTS = ("reserve", "settle", "undo", "claim")


@dataclass(slots=True)
class _Scripts:
    sources: dict[str, str] = field(default_factory=dict)
    # What EVALSHA names them by: the SHA-1 of their text, known before any server is asked.
    shas: dict[str, str] = field(default_factory=dict)


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
        # On a cluster: one pipeline per node, each call answering for itself.
        self._nodes = ClusterCalls(client) if self._cluster else None
        self._prefix = key_prefix
        self._offset = 0.0
        sources = {name: script_source(f"quota_{name}") for name in _SCRIPTS}
        self._scripts = _Scripts(
            sources,
            {
                name: hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
                for name, text in sources.items()
            },
        )
        # Merged per counter and generation: a change reserved before a reset must not
        # be merged with one reserved after it (only the second still applies).
        self._unsettled: dict[tuple[str, int | None], _Change] = {}
        # Reserve calls whose answer was lost, to give back by their id.
        self._undos: list[_Undo] = []
        # Reserve call ids: this process's random tag and a counter, unique across the
        # processes sharing the store for far longer than CALL_MEMORY_S, at a fraction
        # of a uuid4's cost per request.
        self._call_tag = uuid.uuid4().hex[:16]
        self._call_numbers = itertools.count()
        # Per subject tag: the markers of this process's settlement batches that landed
        # whole on their first try and are not known to be deleted yet. They can never
        # be replayed, so the next settlement of the subject deletes them
        # (quota_settle.lua); else every batch (one per 20 ms under load) left a key per
        # subject for BATCH_MEMORY_S. Usually one; more when flushes overlapped (a slow
        # answer while the next batch went out), each of which landed a marker that the
        # other had not seen when it went out.
        self._landed: dict[str, list[str]] = {}
        self._spool = spool
        # Called for each settlement batch the store failed (it goes to the spool; the
        # spool itself reports whether its disk took it).
        self._on_spooled = on_spooled
        # Batches the store failed and the spool's disk refused too, kept with their ids
        # (so each still counts once): tried again by the upkeep and at close. Only a
        # crash loses them.
        self._held: list[_Batch] = []
        # The timer of the flush that gathers the next few milliseconds' settlements
        # (None: no flush is due). It holds no settlement: close() cancels it and sends
        # the queue at once rather than wait it out.
        self._flush_timer: asyncio.TimerHandle | None = None
        # Flushes not finished yet: shutdown waits for them (each holds its batch).
        self._flushes: set[asyncio.Task[None]] = set()
        # Settlement batches on their way to the store (a reservation refused as held
        # waits for those that take off its holds: land_settlements; ``flush`` waits
        # for all of them).
        self._sending: list[_Sending] = []
        # A batch goes out every 20 ms under load, each failing while the store is down.
        self._settling = OutageLog(log, "quota settlement failed, batches to the spool")
        # Settlement writes the store failed, ever (close asks whether its own failed).
        self._settle_failures = 0
        self._clock: asyncio.Task[None] | None = None
        # Reservations arriving while one is in flight go out together (one pipeline);
        # one whose request gave up after it was sent is given back when it lands.
        self.reservations: CoalescingCaller[_ReserveCall, Any] = self._queue()
        # On a cluster, one queue per node: a node that is slow or down holds up only
        # the reservations that need it.
        self._node_queues: dict[str, CoalescingCaller[_ReserveCall, Any]] = {}

    def _queue(self) -> CoalescingCaller[_ReserveCall, Any]:
        return CoalescingCaller(
            self._run_reserve,
            on_abandoned=self._give_back_abandoned,
            on_cut_short=self._give_back_unanswered,
        )

    def now(self) -> float:
        """The Redis server's time, as this process estimates it."""
        return time.time() + self._offset

    async def start(self) -> None:
        # A store that is down at start-up must not stop the server: readiness
        # reports it, and the clock and scripts follow once it answers.
        upkeep = OutageLog(log, "quota store upkeep (clock, spool replay) failed")
        synced = True
        try:
            await self._load_scripts()
            await self._sync_clock()
        except Exception as exc:
            log.warning(
                "quota store not reachable at start (%s): /readyz answers 503 until it"
                " answers; requests meanwhile follow each quota rule's on_store_failure",
                type(exc).__name__,
            )
            # The outage began here: the upkeep's first success says it is over (before,
            # nothing did, and an idle gateway never said the store had come), and the
            # clock is read at its first turn, not CLOCK_SYNC_INTERVAL_S later.
            upkeep.failed(exc, said=True)
            synced = False
        self._clock = asyncio.get_running_loop().create_task(self._keep_clock(upkeep, synced))

    async def _load_scripts(self) -> None:
        # Ahead of the first requests; a server without them gets them with the first
        # call that meets NOSCRIPT there (see _run).
        for name in _SCRIPTS:
            await self._client.script_load(self._scripts.sources[name])

    async def _sync_clock(self) -> None:
        before = time.time()
        seconds, micros = await self._client.time()
        after = time.time()
        # The server read its clock somewhere in the round trip: assume the middle.
        self._offset = seconds + micros / 1e6 - (before + after) / 2

    async def _keep_clock(self, upkeep: OutageLog, synced: bool) -> None:
        last_sync = time.monotonic() if synced else -math.inf
        while True:
            await asyncio.sleep(SPOOL_REPLAY_INTERVAL_S)
            try:
                if time.monotonic() - last_sync >= CLOCK_SYNC_INTERVAL_S:
                    await self._sync_clock()
                    last_sync = time.monotonic()
                await self.replay_spool()
            except Exception as exc:
                upkeep.failed(exc)
            else:
                upkeep.answered()

    async def reserve(
        self,
        limits: list[Limit],
        token_cost: int,
        usd_micros: int = 0,
        room: int = 0,
        prompt: PromptCost | None = None,
    ) -> Reservation | Denial:
        """Check and reserve ``limits``: one request each, ``token_cost`` of each token
        limit, ``usd_micros`` (its estimated cost) of each cost budget. ``room``: the
        least an enforced hard-capped token budget must have left for the request (its
        prompt and least answer); one with less refuses it (``Denial.too_short``), in the
        same script that would count it, so a refused request counts in no limit.
        ``prompt``: the part of both estimates that is the prompt's; a hard cap that
        leaves the answer less than its allowance lowers the cost budgets' reservation
        to the prompt's cost and the capped answer's share of the rest (None: never
        lowered)."""
        groups, calls = self._reserve_calls(limits, token_cost, usd_micros, room, prompt)
        results = await self._round_trip(calls)
        estimate = _Estimate(token_cost, usd_micros, prompt) if prompt is not None else None
        return self._outcome(limits, groups, calls, results, estimate)

    async def reserve_unless_claimed(
        self, limits: list[Limit], token_cost: int, claims: list[RecordClaim]
    ) -> tuple[list[str] | Exception, Reservation | Denial | Exception | None]:
        """Each claim's record, and the reservation, in one round trip: the records are
        claimed first, and when one holds another value than its claim's, nothing is
        reserved (None). Either part's failure is its answer (the other's stands: the
        caller's policies decide); a round trip that failed whole raises."""
        groups, calls = self._reserve_calls(limits, token_cost)
        # On one server the claim gives back the calls after it before they run; on a
        # cluster their markers live in other slots, and they are given back below.
        markers = [] if self._cluster else [call.keys[0] for call in calls]
        guards = [
            _ReserveCall([claim.key, *markers], [claim.value, claim.ttl_s, CALL_MEMORY_S], [],
                         "claim")
            for claim in claims
        ]  # fmt: skip
        results = await self._round_trip([*guards, *calls])
        answers, results = results[: len(guards)], results[len(guards) :]
        failed = next((answer for answer in answers if isinstance(answer, Exception)), None)
        found = [_text(answer) for answer in answers] if failed is None else []
        if failed is None and any(
            value != claim.value for value, claim in zip(found, claims, strict=True)
        ):
            # Whatever a call reserved (on a cluster), or may have, goes back.
            self._give_back_abandoned(calls, results)
            return found, None
        try:
            outcome: Reservation | Denial | Exception = self._outcome(
                limits, groups, calls, results
            )
        except Exception as exc:
            outcome = exc
        return (found if failed is None else failed), outcome

    def _reserve_calls(
        self,
        limits: list[Limit],
        token_cost: int,
        usd_micros: int = 0,
        room: int = 0,
        prompt: PromptCost | None = None,
    ) -> tuple[list[list[tuple[int, Limit]]], list[_ReserveCall]]:
        # The cost comes from the client's body (its max_tokens): one past what the Lua
        # scripts count exactly (2^53 - 1, every limit's bound) reached a shadow rule's
        # INCRBY as a float and failed the whole script, so the request got a 503, or
        # went through uncounted by every enforced limit under fail_open. No limit can
        # tell a larger reservation from this one: it is past every limit (it refuses
        # the subject's next requests until it settles, as a larger one would).
        token_cost = min(token_cost, MAX_LIMIT)
        usd_micros = min(usd_micros, MAX_LIMIT)
        room = min(room, MAX_LIMIT)
        # The whole estimate as the prompt's: nothing to lower.
        prompt = prompt or PromptCost(token_cost, usd_micros)
        prompt = PromptCost(min(prompt.tokens, token_cost), min(prompt.usd_micros, usd_micros))
        # A single server checks every subject in one script (atomic, no rollback);
        # a cluster needs one script per subject, since each lives in its own slot.
        groups = _by_subject(limits) if self._cluster else [list(enumerate(limits))]
        call_id = f"{self._call_tag}{next(self._call_numbers):x}"
        calls = [
            self._reserve_call(
                [limit for _, limit in group], token_cost, call_id, usd_micros, room, prompt
            )
            for group in groups
        ]
        return groups, calls

    async def _round_trip(self, calls: list[_ReserveCall]) -> list[Any]:
        if self._nodes is None:
            # One server: one round trip for every subject (no per-node split).
            return await self.reservations.call(calls)
        return await self._send_reservations(calls)

    def _outcome(
        self,
        limits: list[Limit],
        groups: list[list[tuple[int, Limit]]],
        calls: list[_ReserveCall],
        results: list[Any],
        estimate: _Estimate | None = None,
    ) -> Reservation | Denial:
        reserved = [0] * len(limits)
        used = [0] * len(limits)
        effective = [limit.limit for limit in limits]
        generations = [0] * len(limits)
        holding = [0] * len(limits)
        held = [0] * len(limits)
        denial: Denial | None = None
        refusals: list[Denial] = []
        with_room: list[Denial] = []
        # A hard-capped budget with too little left for the request refused it.
        too_short: Denial | None = None
        now = self.now()
        failure: Exception | None = None
        admitted: list[list[tuple[int, Limit]]] = []
        lost: list[_ReserveCall] = []
        for group, call, result in zip(groups, calls, results, strict=True):
            if _may_have_run(result):
                lost.append(call)
            if isinstance(result, Exception) or int(result[0]) < 0:
                failure = failure or _as_error(result)
                continue
            if int(result[0]) == 0:
                # Every limit that refused (five values each), in the rules' order: the
                # 429 names the one whose refusal holds longest (refusal_order), as each
                # subject's on a cluster: a budget running requests hold frees up in
                # seconds, one spent not before its window resets. Beside them, the
                # hard-capped budgets that had room.
                for at in range(1, len(result), 5):
                    index = int(result[at]) - 1
                    found = Denial(
                        group[index][1],
                        int(result[at + 1]),
                        int(result[at + 2]),
                        int(result[at + 3]),
                    )
                    if int(result[at + 4]) != 1:
                        with_room.append(found)
                        if int(result[at + 4]) == 2 and too_short is None:
                            too_short = found
                        continue
                    refusals.append(found)
                    if denial is None or _waits_longer(found, denial, now):
                        denial = found
                continue
            admitted.append(group)
            # Three values per limit, then each limit's generation, what this call
            # holds of each and what was held of each after it.
            size = len(group)
            for position, (original, _) in enumerate(group):
                reserved[original] = int(result[1 + position * 3])
                used[original] = int(result[2 + position * 3])
                effective[original] = int(result[3 + position * 3])
                generations[original] = int(result[1 + size * 3 + position])
                holding[original] = int(result[1 + size * 4 + position])
                held[original] = int(result[1 + size * 5 + position])
        if denial is None and too_short is not None:
            # The hard cap's refusal alone: named by the budgets with room (the stage
            # weighs them all, as it weighs an admitted request's).
            denial = replace(too_short, too_short=True)
        if denial is not None or failure is not None:
            # Another subject refused, or its server failed: give back what this request
            # took elsewhere, and whatever calls without an answer took, off the request
            # path (spooled if the store cannot take it).
            self._queue_changes(
                [
                    (limits[i], -reserved[i], generations[i], holding[i])
                    for group in admitted
                    for i, _ in group
                    if reserved[i]
                ]
            )
            self._queue_undos(lost)
            if denial is not None:
                if admitted:
                    # On a cluster, other subjects counted the refused request: given
                    # back at once, not with the batch of the next few milliseconds, so
                    # that it lands before the client's next request is likely to come
                    # (the 429 waits for no round trip of it).
                    self._send_now()
                # A subject that admitted the request (on a cluster) tells its hard-capped
                # budgets as they stood before this request, as a refusing one does.
                with_room += [
                    Denial(limits[i], used[i] - reserved[i], effective[i], held[i] - holding[i])
                    for group in admitted
                    for i, limit in group
                    if limit.hard_cap and limit.kind == "t" and limit.enforce
                ]
                return replace(denial, refusals=tuple(refusals), with_room=tuple(with_room))
            assert failure is not None
            raise failure
        reservation = Reservation(limits, reserved, used, effective, generations, holding, held)
        if len(groups) > 1:
            # Off the request path, as a settlement: the budgets held meanwhile are
            # over-held for the few milliseconds until the batch lands.
            self._queue_changes(_held_within_cap(reservation, estimate))
        return reservation

    async def _send_reservations(self, calls: list[_ReserveCall]) -> list[Any]:
        """Each call's answer (an error is its answer) from a cluster, in each node's
        round trip."""
        assert self._nodes is not None
        by_node: dict[str, list[int]] = {}
        for index, node in enumerate(await self._nodes.node_names([c.keys[0] for c in calls])):
            by_node.setdefault(node, []).append(index)
        if len(by_node) == 1:
            return await self._node_queue(next(iter(by_node))).call(calls)
        waits = [
            asyncio.ensure_future(self._node_queue(node).call([calls[i] for i in indexes]))
            for node, indexes in by_node.items()
        ]
        try:
            answers = await asyncio.gather(*waits, return_exceptions=True)
        except asyncio.CancelledError:
            # The request gave up while a node had not answered yet: what the nodes
            # that did answer reserved is given back (the others' queues see to theirs).
            for wait, indexes in zip(waits, by_node.values(), strict=True):
                if wait.done() and not wait.cancelled() and wait.exception() is None:
                    self._give_back_abandoned([calls[i] for i in indexes], wait.result())
            raise
        results: list[Any] = [None] * len(calls)
        for indexes, answer in zip(by_node.values(), answers, strict=True):
            for position, index in enumerate(indexes):
                results[index] = answer if isinstance(answer, BaseException) else answer[position]
        return results

    def _node_queue(self, node: str) -> CoalescingCaller[_ReserveCall, Any]:
        queue = self._node_queues.get(node)
        if queue is None:
            queue = self._node_queues[node] = self._queue()
        return queue

    def _reserve_call(
        self,
        limits: list[Limit],
        token_cost: int,
        call_id: str,
        usd_micros: int = 0,
        room: int = 0,
        prompt: PromptCost | None = None,
    ) -> _ReserveCall:
        prompt = prompt or PromptCost(token_cost, usd_micros)
        now = self.now()
        # The marker shares the subject's hash tag: on a cluster, the slot of its counters.
        marker = f"{self._prefix}qr:{limits[0].subject_tag}:{call_id}"
        return _ReserveCall(
            keys=[
                marker,
                *(
                    key
                    for limit in limits
                    for key in (
                        limit.key(self._prefix),
                        limit.overrides_key(self._prefix),
                        held_key(limit.key(self._prefix)),
                    )
                ),
            ],
            args=[
                CALL_MEMORY_S,
                HELD_MEMORY_S,
                room,
                prompt.tokens,
                prompt.usd_micros,
                *(
                    value
                    for limit in limits
                    for value in (
                        limit.limit,
                        {"r": 1, "t": token_cost}.get(limit.kind, usd_micros),
                        limit.window.ttl_seconds(now),
                        1 if limit.enforce else 0,
                        limit.kind,
                        limit.override_field,
                        generation_field(limit),
                        # Capped at what remains: the answer is lowered to fit it.
                        1 if limit.hard_cap else 0,
                    )
                ),
            ],
            limits=limits,
        )

    def _give_back_abandoned(self, calls: list[_ReserveCall], results: list[Any]) -> None:
        """A request gave up (its timeout, its client gone) after its reservation was
        sent: what the store reserved for it, requests and tokens, is given back."""
        changes: list[_Change] = []
        lost: list[_ReserveCall] = []
        for call, result in zip(calls, results, strict=True):
            if call.script != "reserve":
                continue  # a claim: nothing to give back
            if _may_have_run(result):
                lost.append(call)
                continue
            if isinstance(result, Exception) or int(result[0]) != 1:
                continue  # nothing was reserved
            size = len(call.limits)
            for position, limit in enumerate(call.limits):
                amount = int(result[1 + position * 3])
                if amount:
                    generation = int(result[1 + size * 3 + position])
                    holding = int(result[1 + size * 4 + position])
                    changes.append((limit, -amount, generation, holding))
        self._queue_changes(changes)
        self._queue_undos(lost)

    def _give_back_unanswered(self, calls: list[_ReserveCall]) -> None:
        """Shutdown gave up on a round trip still waiting for its answer (a slow store):
        its reserve calls may run on the server all the same, so they are given back by
        their ids, as calls whose answer was lost. ``close`` writes the give-back with
        its last batch, or spools it for the next start to replay; else their quota
        stayed held until its window ended."""
        lost = ReplyLostError("the store was closed before it answered")
        self._give_back_abandoned(calls, [lost] * len(calls))

    def settle(
        self,
        reservation: Reservation,
        actual_tokens: int | None,
        actual_usd_micros: int | None = None,
    ) -> None:
        """Correct token reservations with the real usage and cost budgets' with the real
        cost (None: release them), off the request path; request counters stay as
        counted at admission. Without ``actual_usd_micros``, cost budgets keep what they
        reserved unless the tokens are released too."""
        if actual_tokens is not None:
            # As in reserve: a count past what the scripts add exactly failed its batch.
            actual_tokens = min(actual_tokens, MAX_LIMIT)
        if actual_usd_micros is not None:
            actual_usd_micros = min(actual_usd_micros, MAX_LIMIT)
        actual = {"t": actual_tokens, "c": actual_usd_micros}
        changes: list[_Change] = []
        for limit, reserved, generation, holding in reservation.entries():
            if not limit.is_budget:
                continue
            amount = actual[limit.kind]
            if amount is None and limit.kind == "c" and actual_tokens is not None:
                amount = reserved  # kept as reserved: its hold is released all the same
            changes.append(
                (limit, (amount - reserved) if amount is not None else -reserved, generation,
                 holding)
            )  # fmt: skip
        self._queue_changes(changes)
        if _left_too_short(reservation):
            # Its reservation left a budget too short for another request like it: the
            # next one of its subject (a client sending one request after another) would
            # be refused as held by this one until the batch lands, on any process (the
            # one holding the settlement retries after sending it: land_settlements; a
            # worker or replica that got the next request cannot). Sent now, one round
            # trip off the request path, it lands before that request reserves.
            self._send_now()

    def release(self, reservation: Reservation) -> None:
        """Give back all a request reserved, requests and tokens, off the request path:
        for a request the gateway refused itself after reserving (a hard-capped budget
        too small for its prompt). It never reached the provider, and a refusal by the
        store counts it in no limit: neither may this one, or each refused retry took a
        request of the subject's requests_per_* limits."""
        self._queue_changes(
            [
                (limit, -reserved, generation, holding)
                for limit, reserved, generation, holding in reservation.entries()
            ]
        )

    def _queue_changes(self, changes: list[_Change]) -> None:
        """Counter changes for the next settlement batch, merged by key and generation."""
        for limit, delta, generation, holding in changes:
            if not delta and not holding:
                continue  # a settlement at exactly the estimate still ends its hold
            key = (limit.key(self._prefix), generation)
            known = self._unsettled.get(key)
            if known is not None:
                delta, holding = delta + known[1], holding + known[3]
            self._unsettled[key] = (limit, delta, generation, holding)
        self._flush_later()

    def _queue_undos(self, calls: list[_ReserveCall]) -> None:
        """Reserve calls without an answer, given back by their id with the next batch."""
        self._undos.extend(call.undo for call in calls)
        self._flush_later()

    def _flush_later(self) -> None:
        if (self._unsettled or self._undos) and self._flush_timer is None:
            # Settlements of the next few milliseconds go out together: one pipeline
            # instead of one per request, at the cost of that much staleness.
            self._flush_timer = asyncio.get_running_loop().call_later(
                SETTLE_BATCH_S, self._flush_now
            )

    def _flush_now(self) -> None:
        self._flush_timer = None
        self._send_now()

    def settling(self, limits: list[Limit]) -> bool:
        """Whether settlements of this process that have not landed yet (queued for the
        next batch, or on their way) take off what requests hold of every one of
        ``limits``: a reservation those limits refused as held may pass once they land."""
        counters = {limit.key(self._prefix) for limit in limits}
        freeing = {key for (key, _), change in self._unsettled.items() if change[3] > 0}
        for sending, _ in self._sending:
            freeing |= sending
        return bool(counters) and counters <= freeing

    async def land_settlements(self) -> None:
        """Send the queued settlements now, as one batch, and wait until it and the
        batches already on their way have landed (or gone to the spool): for a request
        that its own client's previous answer, settling, would otherwise hold back.

        The batch is taken at once, so that a request arriving meanwhile waits for it
        rather than finding nothing queued; and a request giving up (its store timeout)
        does not cut it short: it goes on, as a timed flush would, and shutdown waits
        for it."""
        waits: list[asyncio.Future[None]] = [landed for _, landed in self._sending]
        sent = self._send_now()
        if sent is not None:
            waits.append(sent)
        if waits:
            await asyncio.shield(asyncio.gather(*waits))

    def _send_now(self) -> asyncio.Future[None] | None:
        """Send the queued settlements as one batch now, in a task of its own; a future
        done once it landed (None: nothing was queued)."""
        taken = self._take()
        if taken is None:
            return None
        flush = asyncio.get_running_loop().create_task(self._send_batch(*taken))
        self._flushes.add(flush)
        flush.add_done_callback(self._flushes.discard)
        return taken[2][1]

    async def flush(self) -> None:
        """Write the pending settlements and wait until they, and every batch already on
        its way (a timed batch, one ``settle`` sent at once), have landed or gone to the
        spool: what was queued before the call is in the store (or spooled) once it
        returns. What the store does not take goes to the spool."""
        # Before, a timed batch that had taken the queue a moment earlier was not waited
        # for: flush() returned while it was still on its way, and a give-back in it (a
        # request that gave up while its reservation was in flight) read as never made.
        on_their_way = [landed for _, landed in self._sending]
        await self._send_queued()
        if on_their_way:
            # Shielded: a caller giving up must not cancel the futures their senders
            # complete (and the batches go on regardless).
            await asyncio.shield(asyncio.gather(*on_their_way))

    async def _send_queued(self) -> None:
        """Send the queued settlements as one batch and wait for it alone."""
        taken = self._take()
        if taken is not None:
            await self._send_batch(*taken)

    def _take(self) -> _Taken | None:
        """The pending settlements and give-backs, as one batch on its way (None: nothing
        pending)."""
        batch, self._unsettled = self._unsettled, {}
        undos, self._undos = self._undos, []
        if not batch and not undos:
            return None
        freeing = frozenset(key for (key, _), change in batch.items() if change[3] > 0)
        sending = (freeing, asyncio.get_running_loop().create_future())
        self._sending.append(sending)
        return batch, undos, sending

    async def _send_batch(
        self,
        batch: dict[tuple[str, int | None], _Change],
        undos: list[_Undo],
        sending: _Sending,
    ) -> None:
        try:
            await self._write(batch, undos)
        finally:
            self._sending.remove(sending)
            sending[1].set_result(None)

    async def _write(
        self, batch: dict[tuple[str, int | None], _Change], undos: list[_Undo]
    ) -> None:
        """Send one batch; to the spool (or held in memory) if the store does not take it."""
        settlement: _Batch = (self._raw(list(batch.values())), undos, uuid.uuid4().hex)
        try:
            await asyncio.wait_for(
                self._settle_raw(*settlement, landed_whole=True), SETTLE_TIMEOUT_S
            )
            self._settling.answered()
        except asyncio.CancelledError:
            # Cut short: it may have landed or not; spooled under its id, it counts once
            # (and a give-back by call id gives back once).
            self._hold_unless(self._to_spool(settlement), settlement)
            raise
        except Exception as exc:
            # Nodes that took their part will not count it again when the batch is
            # replayed: each remembers the batch id (and each given-back call its id).
            self._failed(exc)
            # fsync is disk I/O: off the event loop.
            self._hold_unless(await asyncio.to_thread(self._to_spool, settlement), settlement)

    def _failed(self, exc: Exception) -> None:
        self._settle_failures += 1
        self._settling.failed(exc)
        self._on_spooled()

    def _to_spool(self, settlement: _Batch) -> bool:
        """Append the batch to the spool; False when the disk refused it. Blocks on disk
        I/O, so it runs in a thread and only reports: ``_held`` is the event loop's."""
        if self._spool is None:
            return True  # no spool (tools, tests): the batch is dropped
        changes, undos, batch_id = settlement
        record: dict[str, Any] = {"id": batch_id, "changes": changes}
        if undos:
            record["undo"] = undos
        try:
            self._spool.append(record)
        except OSError:
            log.exception("quota settlement spool not writable: the batch waits in memory")
            return False
        return True

    def _hold_unless(self, spooled: bool, settlement: _Batch) -> None:
        if not spooled:
            self._held.append(settlement)

    async def _retry_held(self) -> None:
        """Batches the spool's disk refused: to the store, or else to the spool again
        (or held again). After a store failure the rest go straight to the spool: each
        store call would wait out the same timeout."""
        held, self._held = self._held, []
        store_failed = False
        for index, settlement in enumerate(held):
            try:
                if not store_failed:
                    try:
                        # Not ``landed_whole``: part of it may have landed at its first
                        # try, and should this try fail, that part's markers must stay.
                        await asyncio.wait_for(self._settle_raw(*settlement), SETTLE_TIMEOUT_S)
                        continue
                    except Exception as exc:
                        self._failed(exc)
                        store_failed = True
                spooled = await asyncio.to_thread(self._to_spool, settlement)
            except asyncio.CancelledError:
                # Stopping (close cancels the upkeep): close tries them once more. One
                # that landed or was spooled meanwhile still counts once, by its id.
                self._held.extend(held[index:])
                raise
            self._hold_unless(spooled, settlement)

    async def replay_spool(self) -> int:
        """Settlements the store missed, in order (those held in memory first); each
        batch counts once."""
        await self._retry_held()
        if self._spool is None:
            return 0
        return await self._spool.replay(self._apply_spooled)

    async def _apply_spooled(self, record: dict[str, Any]) -> None:
        changes = [tuple(change) for change in record["changes"]]
        if any(int(change[3]) < 1 for change in changes):
            # The gateway spools at least 1 (Window.ttl_seconds): a line edited by hand.
            # Applied, the script's EXPIRE 0 would delete the counter and every token
            # counted in its window; a ValueError has the spool set the line aside.
            raise ValueError("a spooled settlement with a time to live below 1 second")
        undos = [_spooled_undo(entry) for entry in record.get("undo", [])]
        await asyncio.wait_for(
            self._settle_raw(changes, undos, str(record["id"])), SETTLE_TIMEOUT_S
        )

    async def settle_now(self, changes: list[tuple[Limit, int]]) -> None:
        """Apply changes at once (operators' adjustments, rollbacks), as one new batch."""
        # Whatever the generation: an operator's change applies to the counter as it is,
        # and ends no request's hold.
        raw = self._raw([(limit, delta, None, 0) for limit, delta in changes])
        await self._settle_raw(raw, [], uuid.uuid4().hex, landed_whole=True)

    def _raw(self, changes: list[_Change]) -> list[_RawChange]:
        """Changes as spooled: (tag, counter, delta, ttl), plus the overrides hash,
        generation field and generation when the change belongs to one, and then what
        its requests held (last: a version before held amounts reads the first seven
        and settles the counter as it did)."""
        now = self.now()
        raw: list[_RawChange] = []
        for limit, delta, generation, holding in changes:
            change: _RawChange = (
                limit.subject_tag,
                limit.key(self._prefix),
                delta,
                limit.window.ttl_seconds(now),
            )
            if generation is not None:
                change += (limit.overrides_key(self._prefix), generation_field(limit), generation)
                if holding:
                    change += (holding,)
            raw.append(change)
        return raw

    async def _settle_raw(
        self,
        changes: list[Any],
        undos: list[_Undo],
        batch_id: str,
        *,
        landed_whole: bool = False,
    ) -> None:
        """Apply one batch. ``landed_whole``: the batch is never spooled once this returns
        (a live flush, an operator's change), so its markers can go with the subjects'
        next settlements; a replayed batch stays in the spool until the replay drops it,
        and a crash before that brings it back, so its markers must stay."""
        by_tag: dict[str, list[_RawChange]] = {}
        for change in changes:
            by_tag.setdefault(str(change[0]), []).append(change)
        markers = {tag: f"{self._prefix}qs:{tag}:{batch_id}" for tag in by_tag}
        # Taken, not read: a flush going out while this one waits for its answer must
        # not count on deleting them, nor leave the markers this one lands unseen.
        deleting = {tag: self._landed.pop(tag, []) for tag in by_tag}
        settles = [
            _settle_call(markers[tag], deleting[tag], group) for tag, group in by_tag.items()
        ]
        gives_back: list[_ScriptCall] = [
            ("undo", [marker, *counters, *overrides, *_held_keys(counters, fields)],
             [CALL_MEMORY_S, *fields])
            for marker, counters, overrides, fields in undos
        ]  # fmt: skip
        try:
            await self._run([*settles, *gives_back])
        except BaseException:
            # The deletions may not have run: the subjects' next settlements try again
            # (deleting a marker twice is harmless).
            self._remember_landed(deleting)
            raise
        self._remember_landed({tag: [markers[tag]] for tag in by_tag} if landed_whole else {})

    def _remember_landed(self, landed: dict[str, list[str]]) -> None:
        """Markers of batches that can no longer come back, for the subjects' next
        settlements to delete, beside those other flushes left meanwhile."""
        for tag, markers in landed.items():
            if markers:
                # Last settled last: the subjects settled least recently are forgotten first.
                self._landed[tag] = [*self._landed.pop(tag, []), *markers]
        while len(self._landed) > LANDED_MARKERS:
            del self._landed[next(iter(self._landed))]

    async def _run_reserve(self, calls: list[_ReserveCall]) -> list[Any]:
        # Each caller learns of its own calls' errors: one subject's server failing
        # does not fail (and leak) the reservations the other calls made.
        return await self._run([(call.script, call.keys, call.args) for call in calls], True)

    async def _run(self, calls: list[_ScriptCall], errors_as_results: bool = False) -> list[Any]:
        """One round trip of EVALSHAs; calls that met NOSCRIPT are sent again with the
        script's text. With ``errors_as_results``, a call's error is its result;
        otherwise the first error is raised."""
        results = await self._send(calls)
        missing = [
            index for index, result in enumerate(results) if isinstance(result, NoScriptError)
        ]
        if missing:
            # A server that lost its scripts (restarted, failed over) ran none of these
            # calls; the others ran, and must not run again. EVAL gives that server the
            # script as it runs the call: nothing is asked of the other servers, some of
            # which may be down.
            try:
                again = await self._send([calls[index] for index in missing], with_text=True)
            except Exception as exc:
                if not errors_as_results:
                    raise
                # Only these calls failed: the others' answers stand (and are given
                # back by their callers if they must be).
                again = [exc] * len(missing)
            for index, result in zip(missing, again, strict=True):
                results[index] = result
        if not errors_as_results:
            errors = [result for result in results if isinstance(result, Exception)]
            if errors:
                # The calls that answered landed whole or not at all (each script checks
                # every key before it writes). Raised first, a refusal (a key of another
                # type) had the spool set the batch aside, with the part that had met an
                # outage (a node down, OOM) in it: never applied. An outage makes the
                # batch wait instead; its replay lands that part, the rest counts once.
                raise next((error for error in errors if not refused_by_store(error)), errors[0])
        return results

    async def _send(self, calls: list[_ScriptCall], with_text: bool = False) -> list[Any]:
        """One round trip, sent once; every call answers for itself (``cluster_calls``):
        an error reply, ``NotSentError`` (nothing ran) or ``ReplyLostError`` (sent, no
        answer: it may have run) is its result."""
        scripts = self._scripts.sources if with_text else self._scripts.shas
        verb = "EVAL" if with_text else "EVALSHA"
        commands = [(verb, scripts[name], len(keys), *keys, *args) for name, keys, args in calls]
        if self._nodes is not None:
            return await self._nodes.send(
                [(keys[0], command) for (_, keys, _), command in zip(calls, commands, strict=True)]
            )
        # One server, one connection: a round trip cut after the write is told apart from
        # one that never left, so the reservations it may have made are given back.
        return await send_once(self._client.connection_pool, commands)

    async def close(self) -> None:
        queues = [self.reservations, *self._node_queues.values()]
        await asyncio.gather(*(queue.close(RESERVE_CLOSE_GRACE_S) for queue in queues))
        if self._nodes is not None:
            await self._nodes.close()
        await background.stop(self._clock)
        if self._flush_timer is not None:
            # The queue goes now, with flush() below, rather than when the timer fires.
            self._flush_timer.cancel()
            self._flush_timer = None
        # Not cancelled: a flush in progress holds the only copy of its batch.
        await asyncio.gather(*self._flushes, return_exceptions=True)
        failures = self._settle_failures
        await self.flush()
        await self._retry_held()
        if self._spool is not None and self._settle_failures == failures:
            # The store took the last settlements (or there were none): what the upkeep
            # had not replayed yet (spooled in its last 2 s) goes now, as the usage
            # writer's last flush replays its spool. Left for the next start, it waited
            # for one that may never come (a pod's emptyDir goes with the pod), or comes
            # after the store forgot the ids of batches that had landed unanswered, and
            # counted them again. A store that fails it now costs one call's timeout.
            try:
                await self._spool.replay(self._apply_spooled)
            except OSError:
                log.exception("quota settlement spool could not be read at shutdown")
        if self._held:
            log.error(
                "%d quota settlement batches lost at shutdown: neither the store nor the"
                " spool's disk took them",
                len(self._held),
            )


# A settlement change as spooled: (tag, counter, delta, ttl), then (overrides hash,
# generation field, generation) if it belongs to a generation, then what its requests
# held if anything. Records spooled by a version without generations hold the first
# four only, and apply as they did then; by a version without held amounts, the first
# seven at most, and take nothing off a held amount (their reservations held none).
_RawChange = tuple[Any, ...]
# A settlement batch as sent and spooled: its changes, its give-backs and its id.
_Batch = tuple[list[_RawChange], list[_Undo], str]


def _settle_call(marker: str, landed: list[str], group: list[_RawChange]) -> _ScriptCall:
    """One subject's settle script call (quota_settle.lua), deleting the ``landed``
    markers. Its changes share one overrides hash (the subject's); without generations
    the marker stands in for it, never read."""
    overrides = next((str(change[4]) for change in group if len(change) > 4), marker)
    args: list[Any] = [BATCH_MEMORY_S]
    for change in group:
        field, generation = (change[5], change[6]) if len(change) > 4 else ("", "")
        holding = int(change[7]) if len(change) > 7 else 0
        args += [int(change[2]), int(change[3]), field, generation, holding]
    counters = [str(change[1]) for change in group]
    helds = [held_key(counter) for counter in counters]
    return "settle", [marker, overrides, *counters, *helds, *landed], args


def _spooled_undo(entry: list[Any]) -> _Undo:
    """A give-back as spooled; one without generations (an older version's record)
    gives back whatever the generation, as it did then."""
    marker, counters, *rest = entry
    overrides, fields = rest if rest else ([], [])
    return (
        str(marker),
        [str(key) for key in counters],
        [str(key) for key in overrides],
        [str(field) for field in fields],
    )


def _held_keys(counters: list[str], fields: list[str]) -> list[str]:
    """A give-back's held amounts, one per counter; none for one spooled by a version
    without generations (quota_undo.lua tells its keys apart by their number)."""
    return [held_key(counter) for counter in counters] if fields else []


def _waits_longer(denial: Denial, other: Denial, now: float) -> bool:
    """Whether ``denial``'s refusal holds longer than ``other``'s: the request passes only
    once every limit would take it. On a tie, the one that resets last (the rules' order)."""
    wait, other_wait = denial.wait(now), other.wait(now)
    if wait != other_wait:
        return wait > other_wait
    end, other_end = denial.limit.window.end, other.limit.window.end
    return other_end is not None and (end is None or end > other_end)


def _may_have_run(result: Any) -> bool:
    """A reserve call sent without an answer back (the connection broke or timed out):
    what it may have reserved is given back by its id."""
    return isinstance(result, ReplyLostError)


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _as_error(result: Any) -> Exception:
    if isinstance(result, Exception):
        return result
    return ReplyLostError("the reservation was given back before it reached the store")


def _held_within_cap(reservation: Reservation, estimate: _Estimate | None) -> list[_Change]:
    """On a cluster, hold of every token budget no more than the request's hard caps let
    it use, as the reserve script does for the budgets of one call; what each holds past
    that, to give back (the reservation is lowered to match, so that its settlement
    gives back exactly what stays held).

    Each subject's script runs on its own node and sees only its subject's caps: a
    request capped to the 1,000 tokens left of its user's hard-capped day held its whole
    estimate (32,000 for Claude Code) of its group's monthly quota while it ran, and the
    group's other requests were refused as held by running requests. So are its cost
    budgets, to the prompt's cost and the capped answer's share (``capped_usd_micros``),
    when the request told its ``estimate``'s parts."""
    lefts = [
        reservation.effective[i] - (reservation.used[i] - reservation.reserved[i])
        for i, limit in enumerate(reservation.limits)
        if limit.hard_cap and limit.kind == "t" and limit.enforce
    ]
    if not lefts:
        return []
    most = max(min(lefts), 0)
    changes: list[_Change] = []
    for i, limit in enumerate(reservation.limits):
        if limit.kind == "t":
            excess = reservation.reserved[i] - most
        elif limit.kind == "c" and estimate is not None:
            excess = reservation.reserved[i] - capped_usd_micros(estimate, most)
        else:
            continue
        if excess <= 0:
            continue
        reservation.reserved[i] -= excess
        reservation.used[i] -= excess
        reservation.holding[i] -= excess
        reservation.held[i] -= excess
        changes.append((limit, -excess, reservation.generations[i], excess))
    return changes


def _left_too_short(reservation: Reservation) -> bool:
    """Whether the reservation left one of its token budgets with less than it reserved
    (what another request like it would ask for)."""
    return any(
        limit.is_budget and holding and effective - used < holding
        for limit, used, effective, holding in zip(
            reservation.limits,
            reservation.used,
            reservation.effective,
            reservation.holding,
            strict=True,
        )
    )


def _by_subject(limits: list[Limit]) -> list[list[tuple[int, Limit]]]:
    groups: dict[tuple[str, str], list[tuple[int, Limit]]] = {}
    for index, limit in enumerate(limits):
        groups.setdefault((limit.subject_kind, limit.subject), []).append((index, limit))
    return list(groups.values())

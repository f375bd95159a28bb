"""Store calls that arrive while one is in flight share the next round trip."""

from __future__ import annotations

import asyncio

import pytest

from extproc.store.coalescing import CoalescingCaller, StoreClosingError


class FakeStore:
    """A round trip that answers each item with its double, once released."""

    def __init__(self) -> None:
        self.sent: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None
        self.reached = asyncio.Event()  # a round trip reached the store

    async def send(self, items: list[int]) -> list[int]:
        self.sent.append(items)
        self.reached.set()
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [item * 2 for item in items]


async def test_an_idle_call_goes_at_once_and_alone() -> None:
    store = FakeStore()
    store.release.set()
    caller = CoalescingCaller(store.send)
    assert await caller.call([1, 2]) == [2, 4]
    assert store.sent == [[1, 2]]
    assert (caller.round_trips, caller.calls) == (1, 1)


async def test_calls_queued_behind_a_round_trip_go_together_and_each_gets_its_own() -> None:
    store = FakeStore()
    caller = CoalescingCaller(store.send)
    first = asyncio.create_task(caller.call([1]))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(caller.call([n, n + 100])) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    store.release.set()
    assert await first == [2]
    assert [await task for task in queued] == [[4, 204], [6, 206], [8, 208]]
    assert store.sent == [[1], [2, 102, 3, 103, 4, 104]]
    assert (caller.round_trips, caller.calls) == (2, 4)


async def test_a_caller_that_gave_up_before_its_batch_left_is_not_sent() -> None:
    store = FakeStore()
    caller = CoalescingCaller(store.send)
    first = asyncio.create_task(caller.call([1]))
    await asyncio.sleep(0)
    gone = asyncio.create_task(caller.call([2]))
    kept = asyncio.create_task(caller.call([3]))
    await asyncio.sleep(0)
    gone.cancel()
    store.release.set()
    await first
    assert await kept == [6]
    assert store.sent == [[1], [3]]


async def test_a_failed_round_trip_fails_its_callers_and_the_next_one_works() -> None:
    store = FakeStore()
    caller = CoalescingCaller(store.send)
    store.fail_with = ConnectionError("store down")
    first = asyncio.create_task(caller.call([1]))
    await asyncio.sleep(0)
    queued = asyncio.create_task(caller.call([2]))
    await asyncio.sleep(0)
    store.release.set()
    for task in (first, queued):
        with pytest.raises(ConnectionError, match="store down"):
            await task
    store.fail_with = None
    assert await caller.call([5]) == [10]


async def test_closing_fails_what_is_queued_and_lets_the_round_trip_in_flight_answer() -> None:
    store = FakeStore()
    caller = CoalescingCaller(store.send)
    first = asyncio.create_task(caller.call([1]))
    await asyncio.sleep(0)
    queued = asyncio.create_task(caller.call([2]))
    await asyncio.sleep(0)
    closing = asyncio.create_task(caller.close())
    with pytest.raises(StoreClosingError):
        await queued
    store.release.set()
    await closing
    assert await first == [2]
    assert store.sent == [[1]]
    with pytest.raises(StoreClosingError):
        await caller.call([3])


async def test_a_caller_that_gave_up_after_its_batch_left_gets_its_results_undone() -> None:
    store = FakeStore()
    abandoned: list[tuple[list[int], list[int]]] = []
    caller = CoalescingCaller(store.send, lambda items, results: abandoned.append((items, results)))
    first = asyncio.create_task(caller.call([1]))
    await asyncio.sleep(0)
    gone = asyncio.create_task(caller.call([2, 3]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # A timeout while the round trip is in flight: the store still does the work.
    first.cancel()
    store.release.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await gone == [4, 6]
    assert abandoned == [([1], [2])]


async def test_a_caller_cancelled_as_its_answer_lands_gets_it_undone() -> None:
    store = FakeStore()
    abandoned: list[tuple[list[int], list[int]]] = []
    caller = CoalescingCaller(store.send, lambda items, results: abandoned.append((items, results)))
    call = asyncio.create_task(caller.call([1]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    store.release.set()
    await asyncio.sleep(0)  # the answer has landed, the caller has not resumed yet...
    call.cancel()  # ...when its timeout fires
    with pytest.raises(asyncio.CancelledError):
        await call
    assert abandoned == [([1], [2])]


async def test_a_round_trip_closing_gives_up_on_hands_all_its_items_over_to_be_undone() -> None:
    store = FakeStore()  # never released: the store does not answer within the grace
    cut_short: list[list[int]] = []
    caller = CoalescingCaller(store.send, on_cut_short=cut_short.append)
    waiting = asyncio.create_task(caller.call([1, 2]))
    gone = asyncio.create_task(caller.call([3]))
    await store.reached.wait()
    assert store.sent == [[1, 2, 3]]
    # One caller gave up already; the store may run its item all the same.
    gone.cancel()
    await caller.close(timeout_s=0)
    with pytest.raises(StoreClosingError):
        await waiting
    assert cut_short == [[1, 2, 3]]

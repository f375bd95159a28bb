"""Creates and revokes of one id that overlap, against the real embedded Valkey: whatever
the interleaving, a key that works can be revoked by its id, and an id is not left
taken by a key that does not exist. Each wrapper lets the real store client run, and
does what another caller (or the store) would do at one step of the call it serves."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as StoreConnectionError

from extproc.auth.api_keys import key_digest
from extproc.auth.stored_keys import (
    KeyCreateConflictError,
    KeyIdRetiredError,
    StoredKeys,
    UnknownKeyIdError,
)
from tests.unit.test_stored_keys import PREFIX, Meanwhile, client, new_key

__all__ = ["client"]  # the real store, flushed: test_stored_keys's fixture

ID_KEY = f"{PREFIX}keyid:ci-bot"
# The digest another create's claim names.
OTHER_DIGEST = "0" * 64


async def works(client: Any, secret: str) -> bool:
    return await StoredKeys(client, PREFIX).lookup(key_digest(secret)) is not None


async def test_a_create_whose_claim_expired_never_keeps_the_next_creates_claim(
    client: Any,
) -> None:
    async def claim_expires_and_another_create_claims_the_id() -> None:
        await client.delete(ID_KEY)  # the claim's expiry passed while the store stalled
        assert await client.set(ID_KEY, OTHER_DIGEST, nx=True, px=60_000)

    stalled = Meanwhile(client, "pipeline", claim_expires_and_another_create_claims_the_id)
    with pytest.raises(KeyCreateConflictError):
        await StoredKeys(stalled, PREFIX).create(new_key())

    # No key of the stalled create is left (it would be one its id cannot revoke), and
    # the other create's claim is still in flight, its own to finish.
    assert await client.keys("*") == [ID_KEY.encode()]
    assert await client.get(ID_KEY) == OTHER_DIGEST.encode()
    assert await client.pttl(ID_KEY) > 0


async def test_a_failed_create_never_frees_an_id_another_create_holds(client: Any) -> None:
    created: list[str] = []

    async def another_create_runs_then_the_store_fails() -> None:
        await client.delete(ID_KEY)  # the claim's expiry passed while the store stalled
        secret, _ = await StoredKeys(client, PREFIX).create(new_key())
        created.append(secret)
        raise StoreConnectionError("Connection closed by server.")

    failing = Meanwhile(client, "pipeline", another_create_runs_then_the_store_fails)
    with pytest.raises(StoreConnectionError):
        await StoredKeys(failing, PREFIX).create(new_key())

    [other] = created
    keys = StoredKeys(client, PREFIX)
    assert (await keys.revoke("ci-bot")).key.id == "ci-bot"
    assert not await works(client, other)


async def test_a_second_revoke_of_a_key_never_frees_the_id_the_first_one_retired(
    client: Any,
) -> None:
    await StoredKeys(client, PREFIX).create(new_key())
    retired: list[bytes] = []

    async def the_first_revoke_ends() -> None:
        await StoredKeys(client, PREFIX).revoke("ci-bot")
        retired.append(await client.get(ID_KEY))

    # Both revokes read the id before either deleted anything.
    second = Meanwhile(client, "delete", the_first_revoke_ends)
    await StoredKeys(second, PREFIX).revoke("ci-bot")

    # Still the first revoke's marker, with its time and expiry: a create is refused.
    [marker] = retired
    assert marker.startswith(b"revoked:") and await client.get(ID_KEY) == marker
    with pytest.raises(KeyIdRetiredError):
        await StoredKeys(client, PREFIX).create(new_key())


class ClaimAnswerLost:
    """The store takes the create's claim, and its answer never arrives: the connection
    drops, or the caller hangs up (the gRPC call cancelled) while it is awaited."""

    def __init__(self, client: Any, lost: BaseException) -> None:
        self._client = client
        self._lost = lost

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        await self._client.set(*args, **kwargs)
        raise self._lost


@pytest.mark.parametrize(
    "lost",
    [StoreConnectionError("Connection closed by server."), asyncio.CancelledError()],
    ids=["connection-dropped", "caller-hung-up"],
)
async def test_a_claim_whose_answer_was_lost_leaves_the_id_free(
    client: Any, lost: BaseException
) -> None:
    with pytest.raises(type(lost)):
        await StoredKeys(ClaimAnswerLost(client, lost), PREFIX).create(new_key())

    # Created again at once, not refused as taken until the claim expires.
    secret, _ = await StoredKeys(client, PREFIX).create(new_key())
    assert await works(client, secret)


class CallerHangsUpDuringTheDelete:
    """The revoke's caller hangs up (its task cancelled) once the record's delete is sent."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.task: asyncio.Task[Any] | None = None
        self.id_retired = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def delete(self, *names: str) -> Any:
        deleted = await self._client.delete(*names)
        assert self.task is not None
        self.task.cancel()
        return deleted

    async def evalsha(self, *args: Any) -> Any:
        answer = await self._client.evalsha(*args)
        self.id_retired.set()
        return answer


async def test_a_revoke_whose_caller_hangs_up_still_retires_its_id(client: Any) -> None:
    first, _ = await StoredKeys(client, PREFIX).create(new_key())
    hanging_up = CallerHangsUpDuringTheDelete(client)
    revoking = StoredKeys(hanging_up, PREFIX)
    hanging_up.task = asyncio.ensure_future(revoking.revoke("ci-bot"))

    with pytest.raises(asyncio.CancelledError):
        await hanging_up.task
    await asyncio.wait_for(hanging_up.id_retired.wait(), 10)

    assert not await works(client, first)
    # The revoke finished: the id is retired, not left naming a key that is gone.
    assert (await client.get(ID_KEY)).startswith(b"revoked:")
    with pytest.raises(KeyIdRetiredError):
        await StoredKeys(client, PREFIX).create(new_key())


async def test_revoking_a_key_twice_in_turn_is_unknown_the_second_time(client: Any) -> None:
    await StoredKeys(client, PREFIX).create(new_key())
    await StoredKeys(client, PREFIX).revoke("ci-bot")

    with pytest.raises(UnknownKeyIdError):
        await StoredKeys(client, PREFIX).revoke("ci-bot")

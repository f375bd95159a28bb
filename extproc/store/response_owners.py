"""Who created each stored Responses API response, so that only they continue it.

Every caller of the gateway shares the provider's account, and with it every response
the provider stores: without a record of its own, the gateway would let any caller
continue, compact or count another caller's conversation by its id
(``previous_response_id``). So when a stored response passes through, the gateway
writes, with ``<prefix>`` the config's ``store.key_prefix``::

    <prefix>response:<id>   JSON: {"owner", "provider", "tokens", "guarded"},
                            expiring after store.response_owner_retention_days

``owner`` is the caller (``owner_of``), ``provider`` the provider that stores the
response, ``tokens`` its ``total_tokens``: the context a request continuing it adds to
what its body shows (the stored input plus the output), which the quota reserves.
``guarded`` says that the route that created it guarded its answer (a mask, a refusal):
the provider stores the answer as it generated it, so it is not read back by its id
(``stages.stored_responses``). A record without it (written before it was kept) is
read as unguarded.

One key per response, read and written with one command each: the record fits a
cluster, and a request pays at most one round trip for it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from extproc.context import Identity

# The ids the gateway records: OpenAI's (``resp_`` and hex) and those of compatible
# servers (a UUID), with room to spare; anything else is no key worth writing.
_RESPONSE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,256}")
# Who may continue a response created where no caller was identified (an open route):
# anyone, as anyone could have sent it.
NOBODY = ""


@dataclass(frozen=True, slots=True)
class ResponseOwner:
    """A stored response as the gateway recorded it."""

    owner: str
    provider: str
    tokens: int
    # The creating route's guards checked its answer (the module docstring).
    guarded: bool = False


def owner_of(identity: Identity) -> str:
    """The caller a response belongs to: the user when the credential names one (a JWT's
    subject, an API key's ``user_id``), so all of a person's keys share their
    conversations; else the API key; else, for a token naming no user (a service's token
    naming a group, or a provider whose mapping names no claim), the token's provider and
    group: whoever else holds such a token is the same caller as far as the gateway can
    tell. ``NOBODY`` only for an unauthenticated caller."""
    if identity.method == "none":
        return NOBODY
    if identity.user_id:
        return f"user:{identity.user_id}"
    if identity.api_key_id:
        return f"key:{identity.api_key_id}"
    # Never NOBODY for a verified caller: that would let any caller, an anonymous one
    # included, continue, read or delete the response.
    return f"jwt:{identity.jwt_provider or ''}:{identity.group_id or ''}"


def recordable(response_id: str) -> bool:
    """Whether an id can be a record's key (the pattern above)."""
    return _RESPONSE_ID.fullmatch(response_id) is not None


class ResponseOwners:
    """The records of stored responses' owners (the module docstring)."""

    def __init__(self, client: Any, key_prefix: str, retention_days: int) -> None:
        self._client = client
        self._prefix = key_prefix
        self._ttl_s = retention_days * 86_400
        # Records written off the request path (record_soon), held until they land.
        self._pending: set[asyncio.Task[None]] = set()

    def _key(self, response_id: str) -> str:
        return f"{self._prefix}response:{response_id}"

    async def record(self, response_id: str, owner: ResponseOwner) -> None:
        value = orjson.dumps(
            {
                "owner": owner.owner,
                "provider": owner.provider,
                "tokens": owner.tokens,
                "guarded": owner.guarded,
            }
        )
        await self._client.set(self._key(response_id), value, ex=self._ttl_s)

    def record_soon(
        self,
        response_id: str,
        owner: ResponseOwner,
        timeout_s: float,
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Record off the request path, for an answer whose end the client never read
        (nothing waits for it); ``on_error`` hears of a record that did not land."""

        async def write() -> None:
            async with asyncio.timeout(timeout_s):
                await self.record(response_id, owner)

        task = asyncio.get_running_loop().create_task(write())
        self._pending.add(task)
        task.add_done_callback(lambda done: self._landed(done, on_error))

    async def close(self) -> None:
        """Let the records written off the request path land (each has its timeout)."""
        if self._pending:
            await asyncio.wait(set(self._pending))

    def _landed(self, task: asyncio.Task[None], on_error: Callable[[BaseException], None]) -> None:
        self._pending.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            on_error(error)

    async def forget(self, response_id: str) -> None:
        """Drop a record (its response was deleted at the provider)."""
        await self._client.delete(self._key(response_id))

    async def find(self, response_id: str) -> ResponseOwner | None:
        """The record of a response; None when there is none (never recorded, expired,
        or an id no record can have)."""
        if not recordable(response_id):
            return None
        raw = await self._client.get(self._key(response_id))
        if raw is None:
            return None
        return _parse(raw)


def _parse(raw: bytes | str) -> ResponseOwner | None:
    """A record as written by ``record``; None for anything else (a key written by
    another program under the prefix is no record)."""
    try:
        found = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(found, dict):
        return None
    owner, provider, tokens = found.get("owner"), found.get("provider"), found.get("tokens")
    if not isinstance(owner, str) or not isinstance(provider, str):
        return None
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        return None
    return ResponseOwner(owner, provider, tokens, found.get("guarded") is True)

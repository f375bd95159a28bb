"""A key revoked through one gateway process stops working in every process sharing the store.

Each process caches the store's answer for a key for 30 s. Revoking announces
the key's digest on the store's pub/sub channel and every process forgets it
on the spot; a process whose listening connection broke or went silent clears
its whole cache once it listens again, so a notice it missed cannot keep a
revoked key alive. Two ``StoredKeys``, each with its own connection to one real
Valkey, stand for two processes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from extproc.auth.api_keys import ApiKey, key_digest
from extproc.auth.key_revocations import RevocationListener, revocation_channel
from extproc.auth.stored_keys import NOT_CACHED, StoredKeys
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey

PREFIX = "fresh:"
PING_S = 0.5


def new_key(key_id: str) -> ApiKey:
    return ApiKey(
        id=key_id, user_id="carol", group_id="research", enabled=True, expires_at=None,
        allowed_models=(), allowed_routes=(), labels={},
    )  # fmt: skip


async def eventually(probe: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until ``probe`` holds; pub/sub delivery is asynchronous, not slow."""
    async with asyncio.timeout(timeout_s):
        # Polled: the cache has nothing to wait on, and a test must not add it.
        while True:
            if probe():
                return
            await asyncio.sleep(0.01)


@pytest.fixture
async def process(valkey: EmbeddedValkey) -> AsyncIterator[Callable[..., Any]]:
    """Start a gateway process's key directory (its own store connection) and listener."""
    started: list[tuple[StoredKeys, Any]] = []

    async def start(url: str | None = None, **listener: float) -> StoredKeys:
        client = connect(url or valkey.url, 2.0)
        keys = StoredKeys(client, PREFIX)
        if listener:
            keys.listener = RevocationListener(client, PREFIX, keys.cache, **listener)
        keys.start()
        started.append((keys, client))
        await asyncio.wait_for(keys.listener.subscribed.wait(), 10.0)
        return keys

    admin = connect(valkey.url, 2.0)
    await admin.flushdb()
    yield start
    for keys, client in started:
        await keys.close()
        await client.aclose()
    await admin.aclose()


async def test_a_key_revoked_by_one_process_is_refused_by_the_other_at_once(
    process: Callable[..., Any],
) -> None:
    management, other = await process(), await process()
    secret, _ = await management.create(new_key("ci-bot"))
    digest = key_digest(secret)
    assert await other.lookup(digest) == new_key("ci-bot")
    assert other.cached(digest) == new_key("ci-bot")  # the other process now answers from memory

    await management.revoke("ci-bot")

    await eventually(lambda: other.cached(digest) is NOT_CACHED)
    assert await other.lookup(digest) is None


async def test_other_keys_stay_cached_when_one_is_revoked(process: Callable[..., Any]) -> None:
    management, other = await process(), await process()
    kept, _ = await management.create(new_key("kept"))
    revoked, _ = await management.create(new_key("revoked"))
    for secret in (kept, revoked):
        await other.lookup(key_digest(secret))

    await management.revoke("revoked")

    await eventually(lambda: other.cached(key_digest(revoked)) is NOT_CACHED)
    assert other.cached(key_digest(kept)) == new_key("kept")


async def test_a_malformed_notice_changes_nothing_and_later_ones_still_apply(
    process: Callable[..., Any], valkey: EmbeddedValkey
) -> None:
    management, other = await process(), await process()
    secret, _ = await management.create(new_key("ci-bot"))
    digest = key_digest(secret)
    await other.lookup(digest)
    stranger = connect(valkey.url, 2.0)
    try:
        await stranger.publish(revocation_channel(PREFIX), b"not a digest")
    finally:
        await stranger.aclose()

    await management.revoke("ci-bot")

    await eventually(lambda: other.cached(digest) is NOT_CACHED)


async def test_after_a_lost_connection_nothing_cached_before_survives(
    process: Callable[..., Any], valkey: EmbeddedValkey
) -> None:
    other = await process()
    admin = connect(valkey.url, 2.0)
    try:
        management = StoredKeys(admin, PREFIX)  # revokes without being heard, as if
        secret, _ = await management.create(new_key("ci-bot"))  # ...while `other` was away
        digest = key_digest(secret)
        await other.lookup(digest)
        other.listener.subscribed.clear()
        await admin.delete(f"{PREFIX}key:{{{digest.hex()}}}")  # revoked, and no notice
        await admin.client_kill_filter(_type="pubsub")  # the listener's connection drops

        await asyncio.wait_for(other.listener.subscribed.wait(), 10.0)
        assert other.cached(digest) is NOT_CACHED
        assert await other.lookup(digest) is None
    finally:
        await admin.aclose()


class FreezableProxy:
    """A TCP relay to the store that can stop relaying without closing anything:
    a network that silently drops packets, as a broken link does."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.frozen = asyncio.Event()
        self.thawed = asyncio.Event()
        self.thawed.set()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def freeze(self) -> None:
        self.thawed.clear()

    def thaw(self) -> None:
        self.thawed.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        store_r, store_w = await asyncio.open_connection("127.0.0.1", self._port)
        for source, sink in ((client_r, store_w), (store_r, client_w)):
            task = asyncio.create_task(self._pipe(source, sink, (client_w, store_w)))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await source.read(65536):
                await self.thawed.wait()  # frozen: hold the bytes, close nothing
                sink.write(data)
                await sink.drain()
        except (OSError, RuntimeError, asyncio.CancelledError):
            pass  # either side went away: close the other
        finally:
            for writer in both:
                writer.close()


@pytest.fixture
async def proxy(valkey: EmbeddedValkey) -> AsyncIterator[FreezableProxy]:
    relay = FreezableProxy(urlsplit(valkey.url).port or 6379)
    yield relay
    relay.thaw()
    await relay.close()


async def test_a_silent_connection_is_noticed_and_replaced(
    process: Callable[..., Any], proxy: FreezableProxy, caplog: pytest.LogCaptureFixture
) -> None:
    url = await proxy.start()
    # Short intervals for the test, long enough that a busy machine answers a PING in time.
    other = await process(url, ping_interval_s=PING_S, retry_interval_s=0.05)
    management = await process()
    secret, _ = await management.create(new_key("ci-bot"))
    digest = key_digest(secret)
    await other.lookup(digest)
    caplog.set_level(logging.INFO, logger="extproc.auth.key_revocations")

    # Idle but healthy: PINGs are answered, so the connection and the cache stay.
    await asyncio.sleep(5 * PING_S)
    assert other.cached(digest) == new_key("ci-bot")
    assert "key revocation notices lost" not in caplog.text

    proxy.freeze()  # the link to the store goes quiet: no error, no close
    await management.revoke("ci-bot")  # a notice `other` cannot hear

    # The unanswered PING gives the loss away; the operator reads why in the log.
    await eventually(lambda: "key revocation notices lost" in caplog.text)
    assert "key revocation notices back" not in caplog.text
    proxy.thaw()
    await eventually(lambda: other.cached(digest) is NOT_CACHED)
    assert await other.lookup(digest) is None
    # ...and reads that it is over (before, the log said "lost" and never "back").
    await eventually(lambda: "key revocation notices back" in caplog.text)
    assert caplog.text.count("key revocation notices back") == 1

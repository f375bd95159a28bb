"""Revocation notices: every gateway process forgets a revoked key as soon as it is revoked.

Each process caches the store's answers for keys created at run time
(``KeyCache``, 30 s), so that a client's requests do not each cost a store
read. Revoking deletes the key from the store and then publishes its digest on
the channel ``<prefix>keys:revoked``; every process (each worker of
``server.workers``, each replica sharing the store) listens on that channel on
a connection of its own and drops the key from its cache, so its next request
with that key reads the store and is refused. Nothing is added to the request
path: a notice costs one message per process, when a key is revoked.

Pub/sub does not keep messages for a listener that is not connected. So each
time the listener (re)subscribes, it clears the whole cache: a notice it may
have missed cannot leave a revoked key cached. A connection that stays open but
goes silent is found by a PING on each idle ``ping_interval_s``; an unanswered
one counts as a lost connection. While no listener is connected the cache's
own 30 s expiry still bounds how long a revoked key works.

The channel carries SHA-256 digests of secrets, which already name the keys'
records in the store; never a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final

from extproc import background

if TYPE_CHECKING:
    from extproc.auth.stored_keys import KeyCache

log = logging.getLogger(__name__)

CHANNEL_SUFFIX: Final = "keys:revoked"
PING_INTERVAL_S = 5.0
RETRY_INTERVAL_S = 1.0
_DIGEST_HEX_LENGTH = 64


def revocation_channel(key_prefix: str) -> str:
    """The channel, under the store's key prefix so that gateways sharing a store
    but not a prefix do not hear each other."""
    return key_prefix + CHANNEL_SUFFIX


async def announce(client: Any, key_prefix: str, digest_hex: str) -> int:
    """Tell every listening process that the key with this digest is revoked.

    Returns how many listeners the store handed the notice to.
    """
    return int(await client.publish(revocation_channel(key_prefix), digest_hex))


class _ListenerSilentError(Exception):
    """The store did not answer a PING on the listening connection."""


class RevocationListener:
    """Keeps one subscription to the revocation channel and applies notices to a cache."""

    def __init__(
        self,
        client: Any,
        key_prefix: str,
        cache: KeyCache,
        *,
        ping_interval_s: float = PING_INTERVAL_S,
        retry_interval_s: float = RETRY_INTERVAL_S,
    ) -> None:
        self._client = client
        self._channel = revocation_channel(key_prefix)
        self._cache = cache
        self._ping_interval_s = ping_interval_s
        self._retry_interval_s = retry_interval_s
        self._task: asyncio.Task[None] | None = None
        # Set while subscribed (cleared when the connection is lost): tests wait on it.
        self.subscribed = asyncio.Event()
        # The loss was logged: the subscription that follows says it is over.
        self._said_lost = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="key-revocation-listener")

    async def close(self) -> None:
        await background.stop(self._task)
        self._task = None

    async def _run(self) -> None:
        warned = False
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Once per lost subscription, not once per attempt while the store is down.
                if self.subscribed.is_set() or not warned:
                    log.warning(
                        "key revocation notices lost (%s): until they are back, a key revoked "
                        "elsewhere keeps working here for up to %g s; reconnecting",
                        type(exc).__name__, self._cache.found_ttl_s,
                    )  # fmt: skip
                    warned = self._said_lost = True
                self.subscribed.clear()
            await asyncio.sleep(self._retry_interval_s)

    async def _listen(self) -> None:
        # A cluster client picks the channel's node from its slot map: load it first.
        await self._client.initialize()
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            pinged = False
            while True:
                message = await pubsub.get_message(timeout=self._ping_interval_s)
                if message is None:
                    if pinged:
                        raise _ListenerSilentError()
                    await pubsub.ping()
                    pinged = True
                    continue
                pinged = False
                self.receive(message)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def receive(self, message: dict[str, Any]) -> None:
        """Apply one message from the channel (notice, subscription, or pong)."""
        kind = message.get("type")
        if kind == "subscribe":
            # (Re)subscribed: notices sent while we were away are lost, so forget
            # everything; lookups already in flight will not cache what they read.
            self._cache.clear()
            self.subscribed.set()
            if self._said_lost:
                # Before, only the loss was said: an operator never read it had ended.
                self._said_lost = False
                log.info(
                    "key revocation notices back on %s: a key revoked elsewhere is refused"
                    " here at once again",
                    self._channel,
                )
        elif kind == "message":
            digest = _digest(message.get("data"))
            if digest is None:
                log.warning("ignored a malformed key revocation notice on %s", self._channel)
                return
            self._cache.forget(digest)


def _digest(data: object) -> bytes | None:
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    if not isinstance(text, str) or len(text) != _DIGEST_HEX_LENGTH:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None

"""Which member of a failover chain a request's attempt in flight was sent to.

Envoy makes a failover request's attempts, each on an ext_proc stream of its own
(possibly in another worker process, or on another replica), while the request's own
stream, which writes the log line, the metrics, the rollup and the quota settlement,
waits and hears nothing of them. When the client hangs up before any answer, the
provider that received the attempt in flight generates its answer and bills it; only
the store can tell the request's stream which provider that was. So an attempt on a
fallback writes, before its request leaves for its provider, with ``<prefix>`` the
config's ``store.key_prefix``::

    <prefix>attempt:<key>   the attempt's provider (config name)

``<key>`` is a random one the request's stream made for this request and wrote into the
body its attempts read (``stages.attempt``): not the request id, which a client inside
Envoy's trusted network may choose, and so could share with another request of its own.
Attempts of one request run one after another, so the last one written names the
attempt Envoy sent last. No record means the primary's attempt (the first, which writes
none: a request its primary answers, the common case, pays no store round trip), or no
attempt sent yet. The record expires once no attempt of the request can still be in
flight (``ttl_s``), and is read at most once, by a request whose client hung up
(``stages.attempt_in_flight``): one command each way.
"""

from __future__ import annotations

from typing import Any

# A key the gateway made (uuid4's hex); anything longer is not one, and is not written.
MAX_KEY_CHARS = 64


class AttemptsInFlight:
    """The records of failover attempts sent (the module docstring)."""

    def __init__(self, client: Any, key_prefix: str) -> None:
        self._client = client
        self._prefix = key_prefix

    def _key(self, key: str) -> str:
        return f"{self._prefix}attempt:{key}"

    async def sent(self, key: str, provider: str, ttl_s: float) -> None:
        """Record that the request's attempt on ``provider`` is being sent now."""
        await self._client.set(self._key(key), provider, px=max(1, int(ttl_s * 1000)))

    async def last_sent(self, key: str) -> str | None:
        """The provider of the request's attempt sent last; None when no attempt on a
        fallback was recorded (the primary's, or none sent)."""
        found = await self._client.get(self._key(key))
        if found is None:
            return None
        return found.decode("utf-8", "replace") if isinstance(found, bytes) else str(found)

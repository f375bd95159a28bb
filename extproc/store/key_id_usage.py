"""Which API key ids the usage rollups bill, and the last hour each was billed in.

``<prefix>usage:key_ids`` is a sorted set: each ``api_key_id`` of the rollups, scored
with the unix time of the latest hour it has usage in, trimmed to the rollups'
retention. ``UsageStore`` notes an id once per hour per process (one ZADD, off the
request path); a key create reads it, so that a key created under an id that still has
usage (a config key removed from the config, a key revoked by a gateway from before
ids were retired) is not silently billed, reported, limited and labelled together with
the old holder's requests.
"""

from __future__ import annotations

from typing import Any

SUFFIX = "usage:key_ids"


def index_key(key_prefix: str) -> str:
    return key_prefix + SUFFIX


async def note(client: Any, key_prefix: str, last_hours: dict[str, float], keep_s: float) -> None:
    """Record that each id has usage in the hour starting at its time; forget ids with
    none within ``keep_s`` of the latest hour noted (the rollups have expired)."""
    if not last_hours:
        return
    name = index_key(key_prefix)
    async with client.pipeline(transaction=False) as pipe:
        # GT: a replayed batch of an older hour never moves an id's last use back.
        pipe.zadd(name, last_hours, gt=True)
        pipe.zremrangebyscore(name, "-inf", f"({max(last_hours.values()) - keep_s}")
        # Gone with the rollups when no key has been used for as long as they are kept.
        pipe.expire(name, round(keep_s))
        await pipe.execute()


async def last_used(client: Any, key_prefix: str, key_id: str) -> float | None:
    """The start of the latest hour the rollups bill ``key_id`` in, if any."""
    score = await client.zscore(index_key(key_prefix), key_id)
    return float(score) if score is not None else None

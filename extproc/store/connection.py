"""Open a redis-py asyncio client from ``store.url``.

Accepted URLs:

- ``redis://[user:password@]host:port[/db]``, ``rediss://...`` (TLS), ``unix:///path.sock``
- ``redis+sentinel://[password@]host:port[,host:port...]/<master-name>[/db]``
- ``redis+cluster://[password@]host:port`` (any one node; the rest are discovered)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisClusterException, RedisError

# What a store that is down, unreachable or refusing raises, single node or cluster
# (the cluster client's own exception is not a RedisError).
STORE_ERRORS = (RedisError, RedisClusterException)

StoreClient = Any  # redis.asyncio.Redis or RedisCluster: the same command API


def connect(url: str, timeout_s: float) -> StoreClient:
    parts = urlsplit(url)
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "decode_responses": False,
    }
    if parts.scheme == "redis+cluster":
        return RedisCluster.from_url(url.replace("redis+cluster://", "redis://", 1), **options)
    if parts.scheme == "redis+sentinel":
        return _sentinel(parts.netloc, parts.path, options)
    return redis.Redis.from_url(url, **options)


def _sentinel(netloc: str, path: str, options: dict[str, Any]) -> StoreClient:
    password: str | None = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        password = unquote(credentials.split(":", 1)[-1]) or None
    nodes = []
    for node in netloc.split(","):
        host, _, port = node.rpartition(":")
        nodes.append((host, int(port or 26379)))
    segments = [segment for segment in path.split("/") if segment]
    if not segments:
        raise ValueError("a redis+sentinel:// URL needs the master name as its path")
    db = int(segments[1]) if len(segments) > 1 else 0
    sentinel = Sentinel(nodes, password=password, db=db, **options)  # type: ignore[no-untyped-call]
    return sentinel.master_for(segments[0])

"""Open a redis-py asyncio client from ``store.url``.

Accepted URLs:

- ``redis://[user:password@]host:port[/db]``, ``rediss://...`` (TLS), ``unix:///path.sock``
- ``redis+sentinel://[password@]host:port[,host:port...]/<master-name>[/db]``
- ``redis+cluster://[password@]host:port`` (any one node; the rest are discovered)

A user or password holding '/', '?', '#' or '%' must be percent-encoded, as in any
URL: written raw, such a character ends the URL's authority inside the password, whose
start is then read as a host and a port, and redis-py's errors quote that "port". A URL
that cannot be opened is refused with a ``StoreUrlError`` naming no part of it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from extproc.config.loader import ConfigError

# What a store that is down, unreachable or refusing raises, single node or cluster
# (the cluster client's own exception is not a RedisError).
STORE_ERRORS = (RedisError, RedisClusterException)

StoreClient = Any  # redis.asyncio.Redis or RedisCluster: the same command API


def of_another_type(answer: object) -> bool:
    """Whether a pipeline's answer (``execute(raise_on_error=False)``) says its key is of
    another type than the command reads: a key a person or another program wrote under
    the gateway's prefix, about which a reader says so and goes on with the others. Any
    other error answer is raised: the store cannot answer now."""
    if not isinstance(answer, ResponseError):
        return False
    if str(answer).startswith("WRONGTYPE"):
        return True
    raise answer


# Where a URL's authority ends, as a URL parser reads it.
_AUTHORITY_ENDS = "/?#"
_ENCODE = "percent-encode them in the URL ('/' as %2F, '?' as %3F, '#' as %23, '%' as %25)"


class StoreUrlError(ConfigError, ValueError):
    """``store.url`` cannot be opened; the message names no part of the URL.

    A ``ValueError`` too: that is what callers of ``connect()`` caught before, as the
    bad URL errors redis-py raises."""

    def __init__(self, problem: str) -> None:
        super().__init__("config", [f"store.url: {problem}"])


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be opened as written, in words that quote none of it (in a
    malformed URL, a password can be anywhere); None when it can."""
    rest = url.partition("://")[2]
    userinfo_end = rest.rfind("@")
    if _authority_end(rest) < userinfo_end:
        return (
            "its user or password holds a '/', '?' or '#' (or an '@' follows the host): " + _ENCODE
        )
    hosts = rest[userinfo_end + 1 :]
    for node in hosts[: _authority_end(hosts)].split(","):
        # An IPv6 address is bracketed: its colons are not the port's.
        _, bracket, after = node.rpartition("]")
        _, colon, port = (after if bracket else node).rpartition(":")
        if colon and port and not port.isdigit():
            return "a port is not a number"
    return None


def _authority_end(text: str) -> int:
    """Where a URL parser ends the authority that starts ``text``."""
    return min((at for at in map(text.find, _AUTHORITY_ENDS) if at >= 0), default=len(text))


def connect(url: str, timeout_s: float) -> StoreClient:
    """A client for the store at ``url`` (no connection is made yet); ``StoreUrlError``
    for a URL it cannot be for."""
    problem = url_problem(url)
    if problem is not None:
        raise StoreUrlError(problem)
    try:
        return _client(url, timeout_s)
    except StoreUrlError:
        raise
    except ValueError as exc:
        # redis-py's words quote the part of the URL they could not read.
        raise StoreUrlError(f"not a URL the store client can open ({type(exc).__name__})") from None


def _client(url: str, timeout_s: float) -> StoreClient:
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
        host, colon, port = node.rpartition(":")
        if not colon:  # no port written: Sentinel's own
            host, port = node, ""
        nodes.append((host, int(port or 26379)))
    segments = [segment for segment in path.split("/") if segment]
    if not segments:
        raise StoreUrlError("a redis+sentinel:// URL needs the master name as its path")
    db = int(segments[1]) if len(segments) > 1 else 0
    sentinel = Sentinel(nodes, password=password, db=db, **options)
    return sentinel.master_for(segments[0])

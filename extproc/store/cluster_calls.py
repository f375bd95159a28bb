"""Store commands sent once, each answering for itself: one pipeline per node of a Redis
Cluster, or one to a single server.

redis-py's ``ClusterPipeline`` is built for commands that may safely run twice.
When one node cannot be reached it closes every connection of the client
(cutting the answers other nodes are sending), sleeps, sends again what has no
answer yet, up to three times, and then raises for the whole pipeline. For quota
reservations that means: what the other nodes reserved is lost (never given
back), a reservation whose answer was cut off runs a second time, and the round
trip stalls for a second or more while every request waits behind it.

``ClusterCalls.send`` sends each node's commands as one pipeline on one of that
node's connections, all nodes at once, and never sends a command again on its
own. Each command's result is the node's answer (an error reply as its
exception), or one of:

- ``NotSentError``: no connection to its node could be made; the node never saw it;
- ``ReplyLostError``: it was sent, and the connection broke (or timed out) before its
  answer came: it may have run or not.

Commands the node refused to run because their slot is elsewhere (MOVED, ASK,
TRYAGAIN: nothing ran) are sent again through the client, which follows the
redirection and updates its map of the slots. After a node failed, the map is
read again in the background (at most once a second), so that a failover to a
replica is picked up.

``send_once`` does the same for a single server (or Sentinel's primary): one
pipeline on one connection of the client's pool, the same answers. redis-py's
own pipeline raises one error for the whole round trip, whether the connection
was refused (nothing ran) or broke after the write (everything may have run),
so a caller could not tell which reservations to give back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import (
    AskError,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from extproc import background

log = logging.getLogger(__name__)
MAP_REFRESH_INTERVAL_S = 1.0

# One command: the key that routes it (its slot's node) and its arguments.
Command = tuple[str, tuple[Any, ...]]


class NotSentError(RedisConnectionError):
    """Its node could not be reached: the command was not sent, nothing ran."""


class ReplyLostError(RedisConnectionError):
    """The command was sent and no answer came: it may have run or not."""


class ClusterCalls:
    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._map_refresh: asyncio.Task[None] | None = None
        self._map_read_at = 0.0

    async def node_names(self, keys: list[str]) -> list[str]:
        """The node each key lives on now ("" for a slot no node serves)."""
        await self._client.initialize()  # the first time only: reads the map of slots
        names = []
        for key in keys:
            try:
                node = self._client.get_node_from_key(key)
            except RedisClusterException:
                node = None
            names.append(node.name if node is not None else "")
        return names

    async def send(self, commands: list[Command]) -> list[Any]:
        """Each command's answer, in order (see the module's docstring)."""
        results: list[Any] = [None] * len(commands)
        names = await self.node_names([key for key, _ in commands])
        by_node: dict[str, list[int]] = {}
        for index, name in enumerate(names):
            by_node.setdefault(name, []).append(index)
        answers = await asyncio.gather(
            *(
                self._node_round_trip(name, [commands[i][1] for i in indexes])
                for name, indexes in by_node.items()
            )
        )
        for indexes, node_answers in zip(by_node.values(), answers, strict=True):
            for index, answer in zip(indexes, node_answers, strict=True):
                results[index] = answer
        redirected = [
            index
            for index, result in enumerate(results)
            if isinstance(result, (MovedError, AskError, TryAgainError))
        ]
        if redirected:
            again = await asyncio.gather(
                *(self._through_client(commands[index][1]) for index in redirected)
            )
            for index, result in zip(redirected, again, strict=True):
                results[index] = result
        return results

    async def _node_round_trip(self, name: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        node = self._client.get_node(node_name=name) if name else None
        if node is None:
            return [NotSentError("no node serves its slot")] * len(commands)
        try:
            answers = await _pipeline_once(node, commands)
        except NotSentError as error:
            answers = [error] * len(commands)
        if any(isinstance(answer, RedisConnectionError) for answer in answers):
            self._refresh_map_soon()
        return answers

    async def _through_client(self, args: tuple[Any, ...]) -> Any:
        try:
            return await self._client.execute_command(*args)
        except ResponseError as error:
            return error
        except RedisError as error:
            # Sent at least once by the client, which may have retried it.
            return ReplyLostError(f"{type(error).__name__} after a redirection")

    def _refresh_map_soon(self) -> None:
        """Read the map of slots again, in the background: a replica may have taken
        over the node that failed."""
        if self._map_refresh is not None and not self._map_refresh.done():
            return
        if time.monotonic() - self._map_read_at < MAP_REFRESH_INTERVAL_S:
            return
        self._map_read_at = time.monotonic()
        self._map_refresh = asyncio.get_running_loop().create_task(self._refresh_map())

    async def _refresh_map(self) -> None:
        try:
            await self._client.nodes_manager.initialize()
        except Exception as exc:
            log.warning("reading the cluster's map of slots failed: %s", type(exc).__name__)

    async def close(self) -> None:
        await background.stop(self._map_refresh)


async def send_once(pool: ConnectionPool, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Each command's answer from a single server, sent once in one write on one of
    ``pool``'s connections (see the module's docstring)."""
    try:
        # Connects (or reconnects a connection the server closed) before anything is
        # written: a failure here means the server never saw the commands.
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    except (RedisError, OSError) as error:
        return [NotSentError(f"store: {type(error).__name__}")] * len(commands)
    try:
        return await _exchange(connection, "store", commands)
    finally:
        await pool.release(connection)


async def _pipeline_once(node: ClusterNode, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` to ``node`` in one write and read each answer; raises
    ``NotSentError`` when no connection could be made."""
    try:
        connection = node.acquire_connection()
    except RedisError as error:  # the node's pool is full
        raise NotSentError(f"{node.name}: {type(error).__name__}") from error
    try:
        try:
            await node.disconnect_if_needed(connection)  # one marked stale by a map refresh
            if connection.is_connected and await _closed_by_node(connection):
                # An idle connection its node closed (it restarted): a fresh one, rather
                # than a command lost on the old one.
                await connection.disconnect()
            await connection.connect()  # type: ignore[no-untyped-call]  # no-op when connected
        except (RedisError, OSError) as error:
            raise NotSentError(f"{node.name}: {type(error).__name__}") from error
        return await _exchange(connection, node.name, commands)
    finally:
        node.release(connection)


async def _closed_by_node(connection: AbstractConnection) -> bool:
    """Whether an idle connection was closed by its node. redis-py's parsers tell it
    either way: something to read on a connection nobody asked anything of (the
    end of the stream), or, since redis-py 8.2's hiredis parser, a ConnectionError."""
    try:
        return bool(await connection.can_read())
    except (RedisConnectionError, OSError):
        return True


async def _exchange(
    connection: AbstractConnection, name: str, commands: list[tuple[Any, ...]]
) -> list[Any]:
    """Write ``commands`` on a connected ``connection`` at once and read each answer:
    an error reply is its command's result, and so is ``ReplyLostError`` for each
    command whose answer the broken (or timed out) connection did not bring."""
    try:
        return await _write_and_read(connection, name, commands)
    except BaseException:
        # Cancelled part-way (shutdown): answers still on their way would be read as
        # the next round trip's on this connection, so it is closed, not reused.
        await connection.disconnect(nowait=True)
        raise


async def _write_and_read(
    connection: AbstractConnection, name: str, commands: list[tuple[Any, ...]]
) -> list[Any]:
    try:
        await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
    except (RedisError, OSError) as error:
        # The write failed part-way: some commands may have reached the server.
        return [ReplyLostError(f"{name}: {type(error).__name__}")] * len(commands)
    answers: list[Any] = []
    for _ in commands:
        if answers and isinstance(answers[-1], ReplyLostError):
            # The connection is gone (redis-py closed it): no more answers on it.
            answers.append(answers[-1])
            continue
        try:
            answers.append(await connection.read_response())
        except ResponseError as error:
            answers.append(error)
        except (RedisError, OSError) as error:
            answers.append(ReplyLostError(f"{name}: {type(error).__name__}"))
    return answers

"""SCAN in steps a paged listing can stop between and resume from, on one server or a Cluster.

A listing's page ends where its room does, which is rarely where one SCAN call's batch
ends: ``COUNT`` is a hint, and one call may give more names than a page holds. So a
position is a SCAN cursor and, within the batch SCAN answers from it, how far the
listing went. The names of a batch are ordered by a hash of each name (the position
holds the last hash handled, never a name: a stored key's name holds the digest of its
secret); resuming runs SCAN from the same cursor again and skips what sorts up to it.

What SCAN guarantees carries over: a name present from the first page to the last is
given at least once; one added or removed meanwhile may be given or not; one may be
given twice (Redis returns a name again when its table grows or shrinks between calls),
which a listing removes within one page and documents across pages. Skipping by mark
is sound only while SCAN from the cursor gives the batch it gave before: the position
also holds the cursor that batch ended at, and a batch that ends elsewhere (names
deleted or added in its part of the table, which moves where ``COUNT`` stops it, or a
resize) is given whole again, repeats and all, since names past the old batch's end
were never given whatever their marks.

On a Redis Cluster each primary has cursors of its own: the position names the primary
(by ``host:port``, in the order of their names) and its cursor, and the scan moves to
the next primary when one's cursor comes back to 0. The position also holds a mark of
the primaries it walks: once they changed (a failover, a resharding), the next batch
is refused rather than walking primaries of another order, which skips the one that
took over from a primary not yet walked when its name sorts before the position's.
The Cluster's map is read again for each batch that resumes on a named primary: the
client's map is read again only when a command fails, and still names a primary the
old one of a failover that lives on as a replica, which SCAN would read on from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio.cluster import RedisCluster

# The hash ordering a batch's names: 8 bytes, in hex.
_MARK_BYTES = 8


class ScanTopologyError(Exception):
    """The Cluster's primaries are not those a position walks (a failover or a resharding
    since the page before): the listing cannot know what it has given."""


@dataclass(frozen=True, slots=True)
class ScanPosition:
    """Where a scan stands: the primary (``""``: the one server, or a Cluster's first),
    its SCAN cursor, the mark of the last name handled of the batch SCAN gives from
    that cursor (``""``: none yet), the cursor that batch ended at (``until``) and the
    mark of the Cluster's primaries, by name, in order (``""``: one server, or the start)."""

    node: str = ""
    cursor: int = 0
    after: str = ""
    until: int = 0
    primaries: str = ""


@dataclass(frozen=True, slots=True)
class ScanBatch:
    """The names one SCAN call gave that are left to handle, in mark order, each with its
    mark; ``next`` is the position after all of them (None: the scan is over)."""

    names: list[tuple[str, str]]
    at: ScanPosition
    next: ScanPosition | None
    # The cursor SCAN answered for this batch (0: the node's scan is over).
    ended_at: int

    def position_after(self, handled: int) -> ScanPosition | None:
        """The position once the first ``handled`` names are handled."""
        if handled >= len(self.names):
            return self.next
        if handled == 0:
            return self.at
        return replace(self.at, after=self.names[handled - 1][1], until=self.ended_at)


def mark(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[: 2 * _MARK_BYTES]


def is_mark(text: str) -> bool:
    return len(text) == 2 * _MARK_BYTES and all(char in "0123456789abcdef" for char in text)


async def scan_batch(client: Any, at: ScanPosition, match: str, count: int) -> ScanBatch:
    """One SCAN call from ``at``: the names matching ``match`` not handled yet."""
    if isinstance(client, RedisCluster):
        if at.node:
            # The client reads the Cluster's map again only when a command fails: after
            # a failover whose old primary lives on as a replica it still names that
            # one a primary. CLUSTER SLOTS, as the client reads it (ROLE, which a node
            # would answer for itself, is a command of @dangerous that ACLs deny).
            await client.nodes_manager.initialize()
        nodes = sorted(client.get_primaries(), key=lambda node: node.name)
        names = [node.name for node in nodes]
        primaries = mark(" ".join(names))
        if at.node and (at.primaries != primaries or at.node not in names):
            raise ScanTopologyError(
                "the store's Cluster primaries are not those the page before was read from"
                " (a failover or a resharding since): list again from the first page"
            )
        index = names.index(at.node) if at.node else 0
        # Each node's cursor by its name, and the names it gave.
        answer: Any = await client.scan(
            cursor=at.cursor, match=match, count=count, target_nodes=nodes[index]
        )
        cursors, found = answer
        cursor = int(cursors[names[index]])
        node = names[index]
        following: ScanPosition | None = ScanPosition(node, cursor, primaries=primaries)
        if cursor == 0 and index + 1 < len(names):
            following = ScanPosition(names[index + 1], primaries=primaries)
        elif cursor == 0:
            following = None
    else:
        cursor, found = await client.scan(cursor=at.cursor, match=match, count=count)
        node = primaries = ""
        following = ScanPosition("", int(cursor)) if int(cursor) != 0 else None
    marked = sorted({(mark(text), text) for raw in found if (text := _text(raw))})
    after = at.after if int(cursor) == at.until else ""
    left = [(text, name_mark) for name_mark, text in marked if name_mark > after]
    start = ScanPosition(node, at.cursor, after, primaries=primaries)
    return ScanBatch(left, start, following, int(cursor))


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw

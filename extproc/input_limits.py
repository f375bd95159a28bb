"""Bounds on the shape of what clients send, beyond its size in bytes.

A conversation's ``messages`` must be a non-empty array of at most
``limits.max_messages`` entries (``checked_messages``), whichever API sends it.

orjson parses up to 1024 levels of nesting but serialises at most 254, so a
body nested a few hundred levels deep would parse, then fail when the gateway
writes it back for the provider. The limit here is far below both, checked
once on the parsed body, and without recursion: the check itself cannot be
made to blow the stack.
"""

from __future__ import annotations

from typing import Any

from extproc.errors import BadRequestError

# What nests: a JSON body's objects and arrays, as orjson reads them.
_CONTAINERS = (dict, list)


def checked_messages(value: Any, max_messages: int) -> list[Any]:
    """A body's ``messages``: refused unless a non-empty array within the limit."""
    if not isinstance(value, list) or not value:
        raise BadRequestError(
            "'messages' is required and must be a non-empty array", param="messages"
        )
    if len(value) > max_messages:
        raise BadRequestError(
            f"'messages' has {len(value)} entries; the limit is {max_messages}",
            param="messages",
        )
    return value


def nesting_depth_over(value: Any, limit: int) -> bool:
    """True when ``value`` nests lists and objects deeper than ``limit`` levels.

    Goes level by level, each level's containers gathered in one comprehension, and
    stops at the first level past the limit, so a flat chat body costs a few dozen
    steps. A coding agent's 100 KB request (a long history, tool schemas: a few
    hundred containers) took about 150 us with a stack of (container, depth) pairs,
    each child pushed and popped on its own; about half that this way.
    """
    level = [value]
    depth = 1
    while level:
        if depth > limit:
            return True
        level = [
            child
            for current in level
            if isinstance(current, _CONTAINERS)
            for child in (current.values() if isinstance(current, dict) else current)
            if isinstance(child, _CONTAINERS)
        ]
        depth += 1
    return False

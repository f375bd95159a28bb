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

    Visits each container once and stops at the first one past the limit, so a
    flat chat body costs a few dozen steps.
    """
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        current, depth = pending.pop()
        if depth > limit:
            return True
        if isinstance(current, dict):
            children: Any = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        for child in children:
            if isinstance(child, dict | list):
                pending.append((child, depth + 1))
    return False

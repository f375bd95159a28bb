"""Keys of a JSON-RPC body as written: find one the gateway reads by that a message (or
its ``params``) gives twice, or spells in another case.

orjson, which reads the body, keeps the last of two equal keys and says nothing of
their spelling; this reads the names as written (escapes decoded: ``"m\\u0065thod"``
is ``method``), but only where the gateway reads them: the messages' own keys and
their ``params``' keys. A single message is walked key by key and every other value
(a tool's ``arguments``, whatever its size or shape) is skipped by the standard
library's C scanner, so the cost stays close to one parse of the body. A batch, many
small messages, is scanned in C at once, its objects as tuples of pairs. (A Python
hook on every object of the body, as ``json.loads(object_pairs_hook=...)`` calls it,
cost several times the parse: an event loop held for a tenth of a second or more
per MiB of small objects.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from json.scanner import make_scanner
from typing import Any, cast

Scanner = Callable[[str, int], tuple[Any, int]]
# The standard library's C scanner: one value from an index, and its end. (Typeshed types
# its argument as a scanner; it reads the decoder's settings.)
_scan_value: Scanner = make_scanner(cast("Any", json.JSONDecoder()))
# The same, with every object as a tuple of (key, value) pairs: arrays stay lists, so an
# object is never mistaken for one.
_scan_pairs: Scanner = make_scanner(cast("Any", json.JSONDecoder(object_pairs_hook=tuple)))
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# An object's start (and its end, when empty); a key with its colon and the space up to
# its value (group 1: the key as written, escapes undecoded); what follows a value.
_OPEN = re.compile(r"\{[ \t\n\r]*(\}?)")
_NAME = re.compile(r'"((?:[^"\\]|\\.)*)"[ \t\n\r]*:[ \t\n\r]*', re.DOTALL)
_AFTER = re.compile(r"[ \t\n\r]*([,}])[ \t\n\r]*")
_PARAMS = "params"
# An A2A message's own object under ``params``: its ``taskId`` names the task it continues.
_MESSAGE = "message"

Pairs = tuple[tuple[str, Any], ...]
# The keys read at one level of a message, and the same by their folded spelling.
Level = tuple[frozenset[str], dict[str, str]]
# The key under which ``_clash`` finds the next level, by how many levels are left: the
# message's ``params`` (3: the envelope, params, message), then params' ``message``.
_WALKED = {3: _PARAMS, 2: _MESSAGE}


class UnreadableKeysError(Exception):
    """The body is JSON to orjson but not to the standard library's scanner (nesting
    deeper than its recursion limit): its keys cannot be checked."""


def misspelt_key(
    body: bytes,
    envelope: frozenset[str],
    params: frozenset[str],
    message: frozenset[str] = frozenset(),
) -> tuple[str, str | None] | None:
    """The first key of ``envelope`` (a message's), ``params`` (its ``params``') or
    ``message`` (its ``params.message``') that the body gives twice, with None, or spells
    in another case (``casefold``: the long s and the Kelvin sign too), with that
    spelling. ``body`` is JSON orjson has read."""
    # Each level's keys, and by their folded form (A2A's ``taskId`` has a capital), once
    # per body: a batch asks them of every message.
    levels = tuple(
        (keys, {key.casefold(): key for key in keys}) for keys in (envelope, params, message)
    )
    try:
        text = body.decode()
        start = _skip_space(text, 0)
        if text.startswith("{", start):
            pairs, _ = _object(text, start, (_PARAMS, _MESSAGE))
            return _clash(pairs, levels)
        if not text.startswith("[", start):
            return None  # no message at all: refused as such, not for its keys
        items, _ = _scan_pairs(text, start)
        for item in items:
            found = _clash(item, levels) if isinstance(item, tuple) else None
            if found is not None:
                return found
        return None
    except RecursionError:
        raise UnreadableKeysError("the request body is nested too deeply to be read") from None
    except (ValueError, IndexError, StopIteration):
        # orjson read it, so this is a difference between the two parsers.
        raise UnreadableKeysError("the request body could not be read for its keys") from None


def _clash(pairs: Pairs, levels: tuple[Level, ...]) -> tuple[str, str | None] | None:
    """The first clash among ``pairs`` of the keys of ``levels[0]``, then in ``params``
    (and its ``message``) of those of the levels below."""
    read, folded_read = levels[0]
    # The key the next level is under (None at the last).
    descend = _WALKED.get(len(levels))
    seen: set[str] = set()
    for key, value in pairs:
        if key in read:
            if key in seen:
                return key, None
            seen.add(key)
        elif (meant := folded_read.get(key.casefold())) is not None:
            return meant, key
        if key == descend and isinstance(value, tuple):
            found = _clash(value, levels[1:])
            if found is not None:
                return found
    return None


def _object(text: str, at: int, walked: tuple[str, ...]) -> tuple[Pairs, int]:
    """The keys of the object at ``at`` (its ``{``) and the index after it. Values are
    skipped (None), but an object under ``walked[0]`` becomes its keys, and in it, one
    under ``walked[1]``... (``params``, then its ``message``)."""
    opened = _OPEN.match(text, at)
    if opened is None:
        raise ValueError("not an object")
    at = opened.end()
    if opened.group(1):
        return (), at
    found: list[tuple[str, Any]] = []
    while True:
        named = _NAME.match(text, at)
        if named is None:
            raise ValueError("not a key")
        key = named.group(1)
        if "\\" in key:
            key, _ = _scan_value(text, at)  # the key, a JSON string, its escapes decoded
        at = named.end()
        value: Pairs | None = None
        if walked and key == walked[0] and text.startswith("{", at):
            value, at = _object(text, at, walked[1:])
        else:
            _, at = _scan_value(text, at)
        found.append((key, value))
        after = _AFTER.match(text, at)
        if after is None:
            raise ValueError("unterminated object")
        at = after.end()
        if after.group(1) == "}":
            return tuple(found), at


def _skip_space(text: str, at: int) -> int:
    match = _WHITESPACE.match(text, at)
    assert match is not None  # the pattern matches the empty string
    return match.end()

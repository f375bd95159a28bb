"""A schema's ``enum`` as a guard writes it: masked values stay distinct.

An ``enum`` lists the values a schema allows, and JSON Schema wants them distinct:
OpenAI's strict mode and Gemini refuse a schema whose ``enum`` names a value twice, with
a 400 about a schema the client never wrote that way. Two addresses masked alike would
become that duplicate (``["<EMAIL>", "<EMAIL>"]``), so a masked value another entry
already holds gets a suffix, ``#2`` (else ``#3``, and so on: the first no entry holds),
as a tool input's renamed key does (``content._Members``): ``["alice@example.com",
"bob@example.com"]`` becomes ``["<EMAIL>", "<EMAIL>#2"]``. Each entry stays one choice
the model can make, and the list keeps its length and order.

An entry may be any JSON value, and an object or array entry is read key by key and
string by string: ``[{"to": "alice@example.com"}, {"to": "bob@example.com"}]`` masked
alike became two equal objects. Entries are compared as JSON values (an object's members
in any order), and the string or key whose mask made an entry equal to another gets the
suffix: ``[{"to": "<EMAIL>"}, {"to": "<EMAIL>#2"}]``.

The gateway does not unmask answers: a model choosing ``<EMAIL>#2`` answers with that
string, as it answers ``<EMAIL>`` with a single masked value.
"""

from __future__ import annotations

from typing import Any

import orjson


def _key(value: Any) -> Any:
    """What an entry is compared by: a string itself, an object or array its JSON with the
    members sorted (bytes: never equal to a string); None for what no guard writes
    (numbers, booleans, null), which is not counted."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return None


class DistinctEnum:
    """The values of one ``enum`` list, by index: what its slots read and write (a string
    entry's slot directly, an object's or array's slots through ``inside``)."""

    __slots__ = ("_counts", "_keys", "_suffixes", "_values")

    def __init__(self, values: list[Any]) -> None:
        self._values = values
        # By entry key, how many entries hold it, and each entry's key: worked out at the
        # first write, kept after.
        self._counts: dict[Any, int] | None = None
        self._keys: list[Any] = []
        # By the key an entry came out with, the last suffix given to make it distinct.
        self._suffixes: dict[Any, int] = {}

    def __getitem__(self, index: int) -> Any:
        return self._values[index]

    def __setitem__(self, index: int, text: str) -> None:
        if text == self._values[index]:
            return
        self._count()

        def write(value: str) -> None:
            self._values[index] = value

        self._distinct(index, text, write)

    def inside(self, index: int, holder: Any) -> EnumEntryPart:
        """The holder of a slot inside entry ``index`` (an object or array), whose writes
        keep the entry distinct from the others."""
        return EnumEntryPart(self, index, holder)

    def write_inside(self, index: int, holder: Any, key: Any, text: str) -> None:
        if text == holder[key]:
            return
        self._count()  # before the entry changes: the counts are of the entries as sent

        def write(value: str) -> None:
            holder[key] = value

        self._distinct(index, text, write)

    def _distinct(self, index: int, text: str, write: Any) -> None:
        """Write ``text`` (through ``write``) into entry ``index``, suffixed where the entry
        would then equal another."""
        assert self._counts is not None
        counts = self._counts
        old = self._keys[index]
        if old is not None:
            counts[old] -= 1
        write(text)
        new = _key(self._values[index])
        if counts.get(new, 0):
            # Counting on from the last suffix given to an entry that came out as this one
            # did: n values masked alike cost n, not n * n.
            wanted = new
            count = self._suffixes.get(wanted, 1)
            while counts.get(new, 0):
                count += 1
                write(f"{text}#{count}")
                new = _key(self._values[index])
            self._suffixes[wanted] = count
        self._keys[index] = new
        if new is not None:
            counts[new] = counts.get(new, 0) + 1

    def _count(self) -> None:
        if self._counts is None:
            self._counts = {}
            self._keys = [_key(value) for value in self._values]
            for key in self._keys:
                if key is not None:
                    self._counts[key] = self._counts.get(key, 0) + 1


class EnumEntryPart:
    """A ``TextSlot`` holder inside an object or array entry of an ``enum`` (a member's
    value or name, an item): reads pass through, writes go through ``DistinctEnum``."""

    __slots__ = ("_enum", "_holder", "_index")

    def __init__(self, enum: DistinctEnum, index: int, holder: Any) -> None:
        self._enum = enum
        self._index = index
        self._holder = holder

    def __getitem__(self, key: Any) -> Any:
        return self._holder[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._enum.write_inside(self._index, self._holder, key, value)

"""A schema's ``enum`` as a guard writes it: masked values stay distinct.

An ``enum`` lists the values a schema allows, and JSON Schema wants them distinct:
OpenAI's strict mode and Gemini refuse a schema whose ``enum`` names a value twice, with
a 400 about a schema the client never wrote that way. Two addresses masked alike would
become that duplicate (``["<EMAIL>", "<EMAIL>"]``), so a masked value another entry
already holds gets a suffix, ``#2`` (else ``#3``, and so on: the first no entry holds),
as a tool input's renamed key does (``content._Members``): ``["alice@example.com",
"bob@example.com"]`` becomes ``["<EMAIL>", "<EMAIL>#2"]``. Each entry stays one choice
the model can make, and the list keeps its length and order.

The gateway does not unmask answers: a model choosing ``<EMAIL>#2`` answers with that
string, as it answers ``<EMAIL>`` with a single masked value.
"""

from __future__ import annotations

from typing import Any


class DistinctEnum:
    """The values of one ``enum`` list, by index: what its slots read and write."""

    __slots__ = ("_counts", "_suffixes", "_values")

    def __init__(self, values: list[Any]) -> None:
        self._values = values
        # By string, how many entries hold it: counted at the first write, kept after.
        self._counts: dict[str, int] | None = None
        self._suffixes: dict[str, int] = {}  # by wanted value, the last suffix given

    def __getitem__(self, index: int) -> Any:
        return self._values[index]

    def __setitem__(self, index: int, text: str) -> None:
        old = self._values[index]
        if text == old:
            return
        counts = self._count()
        if isinstance(old, str):
            counts[old] -= 1
        value = text
        if counts.get(value, 0):
            # Counting on from the last suffix given: n values masked alike cost n, not n * n.
            count = self._suffixes.get(text, 1)
            while counts.get(value, 0):
                count += 1
                value = f"{text}#{count}"
            self._suffixes[text] = count
        self._values[index] = value
        counts[value] = counts.get(value, 0) + 1

    def _count(self) -> dict[str, int]:
        if self._counts is None:
            self._counts = {}
            for value in self._values:
                if isinstance(value, str):
                    self._counts[value] = self._counts.get(value, 0) + 1
        return self._counts

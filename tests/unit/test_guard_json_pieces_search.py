"""Tool-call arguments are searched once, then read piece by piece where a match may be.

Arguments that are a JSON object or array are read string by string and number by
number. Each piece used to be searched on its own, and a search costs more than a short
piece takes to read: 64 KB of records (thousands of ids, times and prices) cost 36 ms
with the builtins on. The pieces are now searched together first (joined by newlines, as
a request's texts are) and only those a match touches are read. What is found must not
change: a phase that reads every piece is the reference.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.json_text import pieces
from extproc.guardrails.matching import MatcherGuard, Matchers
from tests.unit.test_guard_builtins_reference import TEXTS

GUARDS = (
    GuardConfig(name="ids", patterns=[{"pattern": r"ord_\d{4}", "name": "ORDER"}],
                action="mask"),
    GuardConfig(name="pii", builtins=["CREDIT_CARD", "SSN", "EMAIL", "PHONE_NUMBER", "CA_SIN"],
                action="mask"),
    GuardConfig(name="words", literals=["secret\nplan", "Zoë"], case_insensitive=True),
)  # fmt: skip


class EveryPiece(Matchers):
    """The phase as it was: no joined search, every piece read on its own."""

    __slots__ = ()

    def candidates(self, texts: list[str]) -> set[int] | None:
        return None


def phases(*configs: GuardConfig) -> tuple[Matchers, Matchers]:
    guards = tuple(MatcherGuard(config, 256) for config in configs)
    return Matchers(guards), EveryPiece(guards)


SCALARS = st.one_of(
    TEXTS,
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["ord_0042", "secret", "plan", "Zoë", "4111 1111 1111 1111", None, True]),
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(TEXTS | st.just("secret"), inner, max_size=6)
    ),
    max_leaves=30,
).filter(lambda document: isinstance(document, (list, dict)))


def outcome(matchers: Matchers, text: str) -> Any:
    rejecting, hits, spans = matchers.scan(text, json_text=True)
    return rejecting, hits, [(span.start, span.end, span.label) for span in spans]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS, st.booleans())
def test_arguments_read_after_one_search_give_what_every_piece_gave(
    document: Any, ensure_ascii: bool
) -> None:
    text = json.dumps(document, ensure_ascii=ensure_ascii)
    for configs in (GUARDS, GUARDS[1:2], GUARDS[2:]):
        joined, every = phases(*configs)
        assert outcome(joined, text) == outcome(every, text)


def test_a_key_with_a_newline_and_a_number_split_across_pieces_are_read_alike() -> None:
    # "secret\nplan" inside one string is found; "secret" and "plan" in two pieces are
    # joined by a newline in the search, which names both, and neither is found alone.
    joined, every = phases(*GUARDS)
    for document in ({"secret\nplan": 1}, ["secret", "plan"], {"secret": "plan"}):
        text = json.dumps(document)
        assert outcome(joined, text) == outcome(every, text)
    assert outcome(joined, json.dumps(["secret", "plan"]))[0] is None
    assert outcome(joined, json.dumps({"secret\nplan": 1}))[0] == 2


def test_records_of_numbers_are_searched_once_and_read_where_a_match_may_be() -> None:
    records = [{"id": 184467 + i, "ts": 1718098937 + i, "price": 19.99} for i in range(500)]
    records[250]["card"] = "4111 1111 1111 1111"
    text = json.dumps(records)
    joined, every = phases(GUARDS[1])
    searched: list[int] = []
    union = joined._joined

    class Counting:
        def finditer(self, text: str) -> Any:
            searched.append(len(text))
            return union.finditer(text)

    joined._joined = Counting()
    assert outcome(joined, text) == outcome(every, text)
    assert outcome(joined, text)[1][0].replacement == "<CREDIT_CARD>"
    assert len(searched) == 2  # one search per scan over all its pieces, not one per piece


NUMBERS_AS_WRITTEN = (
    '{"a": [1.50, -0, 1E5, 2e-3, 100000000000000000000, -7], "Ren\\u00e9e": "x\\"y"}'
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS, st.booleans())
def test_the_texts_searched_are_the_texts_of_the_pieces_read(
    document: Any, ensure_ascii: bool
) -> None:
    # The search reads every text decoded at once; a piece is built only where it may
    # match, and maps its own text back. Both must read the same: numbers as written.
    for text in (json.dumps(document, ensure_ascii=ensure_ascii), NUMBERS_AS_WRITTEN):
        found = pieces(text)
        assert found is not None
        assert found.texts == [piece.text for piece in found]
        assert [found[index].start for index in range(len(found))] == [
            piece.start for piece in found
        ]
        for piece in found:
            written = text[piece.start : piece.end]
            assert piece.number == (written[0] != '"')
            assert (written if piece.number else json.loads(written)) == piece.text


def test_numbers_are_read_as_written() -> None:
    found = pieces(NUMBERS_AS_WRITTEN)
    assert found is not None
    assert found.texts == ["a", "1.50", "-0", "1E5", "2e-3", "100000000000000000000", "-7",
                           "Renée", 'x"y']  # fmt: skip

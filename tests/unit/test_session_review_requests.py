"""Fresh-eyes review of this session's request-path changes: each test is a case a
change broke that a user would notice."""

from __future__ import annotations

from typing import Any

import pytest

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.matching import MatcherGuard, Matchers
from extproc.guardrails.stream import TextStream


def matchers_of(*guards: dict[str, Any], cap: int = 256) -> Matchers:
    return Matchers(tuple(MatcherGuard(GuardConfig.model_validate(g), cap) for g in guards))


def streamed(matchers: Matchers, text: str, chunk: int) -> str:
    """What the client receives of ``text`` streamed ``chunk`` characters at a time."""
    stream = TextStream(matchers)
    released = ""
    for start in range(0, len(text), chunk):
        released += stream.push(text[start : start + chunk])
    return released + stream.flush()


# --- a bounded match is masked whole in a stream, however the chunks fall ----------------

PASSWORD = {"name": "password", "patterns": [r"password=\S{1,20}"], "action": "mask"}


@pytest.mark.parametrize("lead", range(0, 40))
def test_a_bounded_match_never_leaves_in_part_when_a_chunk_ends_inside_it(lead: int) -> None:
    """The long-match change split any match starting more than the longest match's length
    before a chunk's end: the rest of a password (which alone matches nothing) left as is."""
    text = "a " * lead + "password=hunter2hunter2 and then the answer goes on and on."
    released = streamed(matchers_of(PASSWORD), text, chunk=50)
    assert "hunter" not in released and "ter2" not in released, released


CARD = {"name": "card", "patterns": [r"[0-9]{16}"], "action": "mask"}
BLOCK = {"name": "block", "patterns": [r"BEGIN.{1,100}END"], "action": "mask"}


@pytest.mark.parametrize("lead", range(70, 95))
def test_a_short_match_is_masked_whole_beside_a_guard_with_long_matches(lead: int) -> None:
    text = "a" * lead + "4111111111111111" + " and then some more words follow here." * 5
    released = streamed(matchers_of(CARD, BLOCK), text, chunk=200)
    assert not any(c.isdigit() for c in released), released

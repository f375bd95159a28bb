"""Builtins, patterns and literals: what each finds, and what a stream must hold back."""

from __future__ import annotations

import pytest

from extproc.config.guard_model import Builtin, GuardConfig
from extproc.guardrails.detectors import builtin, extent, pattern
from extproc.guardrails.matching import MatcherGuard, Matchers, apply


def found(kind: Builtin, text: str) -> list[str]:
    return [text[span.start : span.end] for span in builtin(kind).find(text)]


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        (Builtin.CREDIT_CARD, "pay with 4111 1111 1111 1111 today", ["4111 1111 1111 1111"]),
        (Builtin.CREDIT_CARD, "5105105105105100", ["5105105105105100"]),
        (Builtin.CREDIT_CARD, "dashes 5555-5555-5555-4444.", ["5555-5555-5555-4444"]),
        (Builtin.CREDIT_CARD, "order 12 4111111111111111", ["4111111111111111"]),
        (Builtin.CREDIT_CARD, "fails Luhn 4111 1111 1111 1112", []),
        (Builtin.CREDIT_CARD, "too long 41111111111111111111111", []),
        (Builtin.CREDIT_CARD, "in a word x4111111111111111", []),
        (Builtin.SSN, "ssn 123-45-6789.", ["123-45-6789"]),
        (Builtin.SSN, "spaced 123 45 6789", ["123 45 6789"]),
        (Builtin.SSN, "never issued 000-45-6789 666-45-6789 900-45-6789 123-00-6789", []),
        (Builtin.SSN, "not alone 1123-45-6789", []),
        (Builtin.CA_SIN, "sin 046 454 286", ["046 454 286"]),
        (Builtin.CA_SIN, "sin 046-454-286", ["046-454-286"]),
        (Builtin.CA_SIN, "mixed 046-454 286, bad 046 454 287", []),
        (
            Builtin.EMAIL,
            "write to jane.doe+ai@mail.example.co.uk.",
            ["jane.doe+ai@mail.example.co.uk"],
        ),
        (Builtin.EMAIL, "no tld jane@localhost", []),
        (Builtin.PHONE_NUMBER, "call (555) 123-4567 now", ["(555) 123-4567"]),
        (Builtin.PHONE_NUMBER, "or 555.123.4567", ["555.123.4567"]),
        (Builtin.PHONE_NUMBER, "London +44 20 7946 0958", ["+44 20 7946 0958"]),
        (Builtin.PHONE_NUMBER, "version 1.2.3 and 12345", []),
    ],
)
def test_builtins_find_what_they_name(kind: Builtin, text: str, expected: list[str]) -> None:
    assert found(kind, text) == expected


def test_catastrophic_backtracking_pattern_answers_at_once() -> None:
    # (a+)+$ takes exponential time in a backtracking engine on "aaa...ab"; RE2 is linear.
    guard = MatcherGuard(GuardConfig(name="evil", patterns=["(a+)+$"]), 256)
    matchers = Matchers((guard,))
    rejecting, hits, _ = matchers.scan("a" * 100_000 + "b")
    assert rejecting is None
    assert hits == []
    rejecting, _, _ = matchers.scan("a" * 100_000)
    assert rejecting == 0


def test_patterns_only_re2_can_run_are_refused_at_load() -> None:
    with pytest.raises(ValueError, match=r"patterns\[0\]: not a valid RE2 pattern"):
        GuardConfig(name="backref", patterns=[r"(a)\1"])


def test_case_insensitive_literals_and_patterns() -> None:
    guard = GuardConfig(
        name="words",
        literals=["secret project"],
        patterns=[{"pattern": "master ?card", "name": "CARD_TALK"}],
        case_insensitive=True,
        action="MASK",
    )
    matchers = Matchers((MatcherGuard(guard, 256),))
    text = "The SECRET Project takes MasterCard and Master Card"
    _, hits, _ = matchers.scan(text)
    assert apply(text, hits) == "The **** takes <CARD_TALK> and <CARD_TALK>"


def test_overlapping_masks_keep_the_earliest_longest_match() -> None:
    guards = (
        MatcherGuard(GuardConfig(name="pii", builtins=["PHONE_NUMBER"], action="mask"), 256),
        MatcherGuard(
            GuardConfig(name="cards", builtins=["credit_card"], action="mask", replacement="#"),
            256,
        ),
    )
    text = "card 4111 1111 1111 1111 phone 555-123-4567"
    _, hits, _ = Matchers(guards).scan(text)
    assert apply(text, hits) == "card # phone <PHONE_NUMBER>"


@pytest.mark.parametrize(
    ("source", "ci", "longest", "holds", "flows"),
    [
        ("credit card", True, 11, "CREDIT", "x"),
        (r"\d{3}-\d{4}", False, 8, "5", "a"),
        ("master ?card|visa", False, 11, "mas", "z"),
    ],
)
def test_extent_reads_longest_match_and_characters(
    source: str, ci: bool, longest: int, holds: str, flows: str
) -> None:
    max_len, chars = extent(source, case_insensitive=ci, cap=256)
    assert max_len == longest
    assert chars is not None
    assert all(chars.match(c) for c in holds)
    assert not chars.match(flows)


def test_extent_is_safe_when_unsure() -> None:
    # Unbounded, any character, RE2-only syntax: the cap and any character.
    assert extent(r"a.+b", case_insensitive=False, cap=64) == (64, None)
    assert extent("[[:digit:]]{16}", case_insensitive=False, cap=64) == (64, None)
    assert pattern(r"\d+", "N", case_insensitive=False, unbounded_cap=40).max_len == 40


def test_holdback_is_only_the_tail_that_could_start_a_match() -> None:
    guard = GuardConfig(name="pii", builtins=["CREDIT_CARD"], action="mask")
    matchers = Matchers((MatcherGuard(guard, 256),))
    assert matchers.holdback("Hello there, friend") == 0
    assert matchers.holdback("your number is 4111 1111") == len(" 4111 1111")
    assert matchers.holdback("digits " + "1" * 80) == 36  # the longest card minus one

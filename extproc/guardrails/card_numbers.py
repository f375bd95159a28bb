"""Card numbers in a run of digit groups: the windows of whole groups passing Luhn.

A run is what the ``CREDIT_CARD`` builtin's pattern matched: digit groups joined by
single spaces or dashes, 13 digits or more. Every window of whole groups holding 13 to
19 digits is a candidate card: a slice of the run's digits, read once, whose Luhn sum
is taken in C rather than digit by digit in Python, so a long run of short groups
(``1 2 3 4 ...``, codes one space apart) costs a few operations per window.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import accumulate

# Luhn doubles every second digit from the right and adds the digits of the product:
# 0 1 2 3 4 5 6 7 8 9 count as 0 2 4 6 8 1 3 5 7 9.
_DOUBLED = str.maketrans("0123456789", "0246813579")
_SEPARATOR = re.compile("[ -]")
_ZERO = ord("0")


def card_windows(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The spans of ``text[start:end]`` (one run) that are card numbers, in order.

    "Stands alone" is a property of the card, not of the run: in "order A1 4111 ...",
    only the group "1" touches a letter, and the card after it stands alone. Every
    window that passes is masked, not only the first found: in "10000000 4111 1111
    1111 1111" the account number and the card's first groups pass the check together,
    and stopping there left the rest of the real card in clear. A window overlapping
    one already found yields its rest (whole groups, never longer than a card), so
    spans neither overlap nor grow past 37 characters."""
    groups = _SEPARATOR.split(text[start:end])
    lengths = [len(group) for group in groups]
    ends = list(accumulate(lengths))  # digits up to the end of each group
    begin = 1 if start > 0 and text[start - 1].isalnum() else 0
    usable = len(groups) - 1 if end < len(text) and text[end].isalnum() else len(groups)
    if usable <= begin or ends[usable - 1] - (ends[begin] - lengths[begin]) < 13:
        return
    digits = "".join(groups)
    masked = begin - 1  # the last group found
    for first in range(begin, usable):
        first_digit = ends[first] - lengths[first]
        if ends[usable - 1] - first_digit < 13:
            return  # no window from here on holds enough digits
        found = -1
        for last in range(first, usable):
            count = ends[last] - first_digit
            if count > 19:
                break
            if count >= 13 and luhn_valid(digits[first_digit : ends[last]]):
                found = last
        if found <= masked:
            continue
        # Group g begins after the digits of the groups before it and one separator each.
        shown = max(first, masked + 1)
        yield start + ends[shown] - lengths[shown] + shown, start + ends[found] + found
        masked = found


def luhn_valid(digits: str) -> bool:
    """The Luhn check, summed in C: the digits as they are from the last, every second
    one from the one before it doubled (a table), less each character's code of 0."""
    kept = digits[-1::-2].encode("ascii")
    doubled = digits[-2::-2].translate(_DOUBLED).encode("ascii")
    return (sum(kept) + sum(doubled) - _ZERO * len(digits)) % 10 == 0

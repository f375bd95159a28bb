"""The text a ``CreateKey`` request names its key's owner and labels with, checked.

A created key's ``user_id`` and ``group_id`` are what quotas, usage rollups, access
rules, logs and metrics count it under, and its labels are printed in ``keys list``.
Before, any text was stored as sent: a line break or a terminal escape in a user id
(pasted, or sent by a hand-made client) put a forged row in the operator's ``keys list``
table and in the chargeback table, ``carol `` with a trailing space was a user no quota
or report of ``carol`` counted, and a 10 KB group went into every metric label of the
key's requests. Each is refused (``InvalidArgumentError``, INVALID_ARGUMENT) naming the
field, before anything is stored or audited; the text itself is not quoted back, as it
may be what would garble the terminal that prints the refusal.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

from extproc.management.quotas import InvalidArgumentError

# Longer than any user, group or label value a directory hands out; a bound, so that a
# key's identity stays a usable label in metrics, rollups and the CLI's table.
MAX_NAME_CHARS = 256
# Label names: short words (``team``, ``cost-center``), filtered by ``--label name=value``.
MAX_LABEL_NAME_CHARS = 128
# Unicode categories of characters that print nothing or move the cursor: controls (line
# breaks, ESC, NUL), format characters (bidi overrides, zero-width ones) and the line
# and paragraph separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def check_key_text(user_id: str, group_id: str, labels: Mapping[str, str]) -> None:
    """Refuse an owner or a label no report, table or filter can show as sent."""
    _check("user_id", user_id, MAX_NAME_CHARS)
    _check("group_id", group_id, MAX_NAME_CHARS)
    for name, value in labels.items():
        if not name:
            raise InvalidArgumentError("labels: a label name is empty")
        _check("labels: a label name", name, MAX_LABEL_NAME_CHARS)
        if "=" in name:
            # `keys list --label name=value` splits at the first "=": unfilterable.
            raise InvalidArgumentError(
                "labels: a label name holds '=', which separates it from its value"
            )
        _check(f"labels[{name!r}]", value, MAX_NAME_CHARS)


def _check(field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise InvalidArgumentError(f"{field} is {len(text)} characters long, more than {limit}")
    if any(unicodedata.category(char) in _UNPRINTABLE for char in text):
        raise InvalidArgumentError(
            f"{field} holds a control or invisible character (a line break, a tab, an"
            " escape, a bidirectional override): it would print as something else"
        )
    if text != text.strip():
        # "carol " is another user than "carol" to quotas and reports, and the two
        # look the same in every table.
        raise InvalidArgumentError(
            f"{field} has spaces around it, which no table shows: give it without them"
        )

"""OpenAI's four shapes of model input, shared by embeddings' ``input`` and text
completions' ``prompt``: one string, an array of strings, an array of token ids, or an
array of arrays of token ids. What a valid one is, and what it costs.

Token ids are counted as given, one token each; text at one token per four characters
(at least one per string, which a provider never bills at zero), as chat prompts are
estimated (``quota.estimate``).
"""

from __future__ import annotations

from typing import Any

from extproc.errors import BadRequestError
from extproc.quota.estimate import CHARS_PER_TOKEN

# The most choices ``n`` (or a text completion's ``best_of``) may ask for: OpenAI's bound
# on ``n``. It keeps the reservation, which multiplies by them, finite.
MAX_CHOICES = 128


def token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_choices(body: dict[str, Any], name: str) -> None:
    """Refuse a choice count (``n``, ``best_of``) that is not an integer from 1 to
    ``MAX_CHOICES`` (null is the default, one)."""
    value = body.get(name)
    if value is not None and not (positive_int(value) and value <= MAX_CHOICES):
        raise BadRequestError(f"'{name}' must be an integer from 1 to {MAX_CHOICES}", param=name)


def check_completion_bounds(body: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Refuse a completion bound (chat's ``max_completion_tokens`` and ``max_tokens``)
    that is not an integer >= 1 (null is none), each field on its own, as OpenAI does.

    Checked with the body, whichever provider serves it: the quota, a hard cap, a
    translation and the charge of a cut answer all read the bound, and one of the wrong
    type that got past the gateway (an OpenAI-compatible server may read ``"100"`` as
    100 and answer) left the cut answer's charge failing, 0 tokens billed."""
    for field in fields:
        value = body.get(field)
        if value is not None and not positive_int(value):
            raise BadRequestError(f"'{field}' must be an integer >= 1", param=field)


def choices(body: dict[str, Any]) -> int:
    """The ``n`` a checked body asks for (one when unset)."""
    value = body.get("n")
    return value if isinstance(value, int) else 1


def check_items(items: list[Any], field: str, *, empty_strings: bool) -> None:
    """Refuse a non-empty array whose items are not all of its first one's shape: strings
    (non-empty unless ``empty_strings``), token ids, or non-empty arrays of token ids."""
    first = items[0]
    if isinstance(first, str):
        for index, item in enumerate(items):
            if not isinstance(item, str) or not (item or empty_strings):
                shape = "a string" if empty_strings else "a non-empty string"
                raise _bad_item(field, index, f"{shape}, as the first one is")
    elif token_id(first):
        if not all(token_id(item) for item in items):
            raise BadRequestError(f"'{field}' mixes token ids with other values", param=field)
    elif isinstance(first, list):
        for index, item in enumerate(items):
            if not isinstance(item, list) or not item or not all(token_id(t) for t in item):
                raise _bad_item(field, index, "a non-empty array of token ids, as the first one is")
    else:
        raise _bad_item(field, 0, "a string, a token id or an array of token ids")


def _bad_item(field: str, index: int, expected: str) -> BadRequestError:
    return BadRequestError(f"{field}[{index}] must be {expected}", param=f"{field}[{index}]")


def estimate_tokens(value: Any) -> int:
    """The tokens of an input of any of the four shapes (0 for anything else)."""
    if isinstance(value, str):
        return max(1, len(value) // CHARS_PER_TOKEN)
    if not isinstance(value, list):
        return 0
    tokens = 0
    for item in value:
        if isinstance(item, str):
            tokens += max(1, len(item) // CHARS_PER_TOKEN)
        elif isinstance(item, list):
            tokens += len(item)
        else:
            tokens += 1  # one token id
    return tokens

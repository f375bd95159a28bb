"""Anthropic's shape of the model list, for Anthropic's clients.

The ``anthropic`` SDKs' ``client.models.list()`` and ``models.retrieve()`` call
``GET /v1/models`` and ``GET /v1/models/{model_id}``, the paths of OpenAI's list, and
say who they are with ``anthropic-version`` (every Anthropic client sends it). They
get the same names the OpenAI list shows the caller, in Anthropic's shape: entries of
``type: model`` with ``display_name`` and ``created_at``, a page of ``limit`` (1 to
1000, 20 by default) after ``after_id`` or before ``before_id``, with ``has_more``,
``first_id`` and ``last_id``, as the SDK pages through them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from extproc.errors import BadRequestError

# The header every Anthropic client sends, and OpenAI's never do.
CLIENT_HEADER = "anthropic-version"
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000


def entry(name: str, created: int) -> dict[str, Any]:
    """One model as Anthropic's API describes it (the gateway's name is its display name)."""
    created_at = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": name, "display_name": name, "created_at": created_at}


def page(names: list[str], query: str, created: int) -> dict[str, Any]:
    """The page of ``names`` the query asks for (``limit``, ``after_id``, ``before_id``).
    An id that is not in the caller's list has nothing after or before it."""
    params = parse_qs(query, keep_blank_values=True)
    limit = _limit(params.get("limit", [""])[-1])
    after = params.get("after_id", [""])[-1]
    before = params.get("before_id", [""])[-1]
    if after and before:
        raise BadRequestError("give after_id or before_id, not both", param="after_id")
    if after:
        start = names.index(after) + 1 if after in names else len(names)
        chosen, has_more = names[start : start + limit], start + limit < len(names)
    elif before:
        end = names.index(before) if before in names else 0
        chosen, has_more = names[max(0, end - limit) : end], end - limit > 0
    else:
        chosen, has_more = names[:limit], limit < len(names)
    return {
        "data": [entry(name, created) for name in chosen],
        "has_more": has_more,
        "first_id": chosen[0] if chosen else None,
        "last_id": chosen[-1] if chosen else None,
    }


def _limit(text: str) -> int:
    if not text:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequestError(f"limit must be a whole number from 1 to {MAX_LIMIT}", param="limit")
    return int(text)

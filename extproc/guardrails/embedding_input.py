"""The text an embeddings request sends: each string of its ``input``.

Request guards read, mask and refuse it as they do a chat message's content, with the
role ``user``: webhooks get one user message per string, moderation reads them when
its ``roles`` include ``user``. Token ids are not text and are not read.
"""

from __future__ import annotations

from typing import Any

from extproc.guardrails.content import TextSlot

ROLE = "user"


def input_slots(body: dict[str, Any]) -> list[TextSlot]:
    """Each string of an embeddings request's ``input``, in order."""
    value = body.get("input")
    if isinstance(value, str):
        return [TextSlot(ROLE, body, "input")]
    if not isinstance(value, list):
        return []
    return [TextSlot(ROLE, value, i) for i, item in enumerate(value) if isinstance(item, str)]

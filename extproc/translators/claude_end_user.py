"""The end user an OpenAI client names, as Anthropic's ``metadata.user_id`` takes one.

OpenAI's chat API names the end user in ``user`` (renamed ``safety_identifier``), a free
string OpenAI takes whatever it holds, and apps often put the user's e-mail address
there. Anthropic's ``metadata.user_id`` serves the same abuse checks, but its API asks
for an opaque id (a uuid, a hash), at most 256 characters, and refuses with a 400 one
that holds an e-mail address ("metadata.user_id: user_id appears to contain an email
address ..."). Sent as it is, such an identifier failed every request of that app on
Claude, with an error about a field the client never sent, where OpenAI's models
answered.

So the gateway sends the identifier Anthropic takes and leaves out one it would refuse:
the request then goes on as one naming no end user, as when a guard removes the field
(docs/guardrails.md), which every provider takes. It is not rewritten (a hash of an
address is a pseudonym anyone can guess back from the address; a placeholder would make
every user one). ``safety_identifier`` is read when ``user`` is absent or not taken.
"""

from __future__ import annotations

import re
from typing import Any

# Anthropic's bound on metadata.user_id (its API reference: maxLength 256).
MAX_LENGTH = 256
# An e-mail address anywhere in the identifier, as Anthropic finds one ("appears to contain").
_EMAIL = re.compile(r"[^\s@]+@[^\s@.]+(?:\.[^\s@.]+)+")
# OpenAI's fields naming the end user, the older one first (the order the gateway read them).
_FIELDS = ("user", "safety_identifier")


def anthropic_user_id(body: dict[str, Any]) -> str | None:
    """The ``metadata.user_id`` to send for an OpenAI chat body: its end user's identifier
    when Anthropic takes it, else None (none is sent)."""
    for field in _FIELDS:
        value = body.get(field)
        if isinstance(value, str) and _taken(value):
            return value
    return None


def _taken(value: str) -> bool:
    """Whether Anthropic's API takes ``value`` as ``metadata.user_id``."""
    return 0 < len(value) <= MAX_LENGTH and _EMAIL.search(value) is None

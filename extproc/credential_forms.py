"""The gateway's own credentials as an upstream could quote them back, and starring them out.

An upstream that quotes what it was sent (a proxy in debug mode, a validation error
listing the request's headers, a tool echoing ``Authorization``) would hand the client
the credential the gateway sent it. Answers are searched with plain byte searches, no
parse, for each form a credential could be quoted in (``quoted_forms``); each one found
becomes as many asterisks (``starred``), so an answer keeps its length (and the
``content-length`` that may have left already). A stream read chunk by chunk holds back
a tail that could begin one (``unfinished_at``) until the next chunk shows the rest.
Shared by provider answers (``backends``) and agent servers' (``agents.credential_echo``).
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import quote

import orjson

# Shorter than this, a "secret" (a placeholder key of a local model server) could be any
# word of an answer; no real key is anywhere near as short.
MIN_SEARCHED_SECRET = 8


@lru_cache(maxsize=16)
def quoted_forms(secrets: tuple[str, ...]) -> tuple[bytes, ...]:
    """``secrets`` as an upstream could quote them: as sent, URL-encoded (a query string
    echoed back), JSON-escaped (orjson's escapes, and the ``\\/`` some encoders write for
    a slash). They differ only for a secret with such characters (an AWS session token's
    ``/``, ``+`` and ``=``). Longest first, so no form is cut by a shorter one inside it."""
    forms: dict[bytes, None] = {}
    for secret in secrets:
        raw = secret.encode()
        for form in (
            raw,
            quote(secret, safe="").encode(),
            orjson.dumps(secret)[1:-1],
            raw.replace(b"/", b"\\/"),
        ):
            forms[form] = None
    return tuple(sorted(forms, key=len, reverse=True))


def starred(body: bytes, needles: tuple[bytes, ...]) -> bytes:
    """``body`` with each of ``needles`` replaced by as many asterisks; ``body`` itself
    (no copy) when it holds none."""
    for needle in needles:
        if needle in body:
            body = body.replace(needle, b"*" * len(needle))
    return body


def unfinished_at(data: bytes, needles: tuple[bytes, ...]) -> int:
    """Where the tail of ``data`` that begins one of ``needles`` starts (``len(data)``:
    none does). Only the last ``len(needle) - 1`` bytes are looked at."""
    cut = len(data)
    if data[-1:] in (b"\n", b"\r"):
        # Most chunks end an event, and no credential holds a line end: nothing to hold.
        return cut
    for needle in needles:
        first = needle[:1]
        at = data.find(first, max(0, len(data) - len(needle) + 1))
        while at != -1 and at < cut:
            if needle.startswith(data[at:]):
                cut = at
                break
            at = data.find(first, at + 1)
    return cut

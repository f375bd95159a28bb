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

import re
from functools import lru_cache
from urllib.parse import quote

import orjson

# Shorter than this, a "secret" (a placeholder key of a local model server) could be any
# word of an answer; no real key is anywhere near as short.
MIN_SEARCHED_SECRET = 8


# Shorter than this, a lead shared by every form (a secret beginning with "/") would be
# found everywhere: each form is searched instead.
_SHORTEST_LEAD = 4
_HEX_ESCAPE = re.compile(rb"%[0-9A-F]{2}")


@lru_cache(maxsize=16)
def quoted_forms(secrets: tuple[str, ...]) -> tuple[bytes, ...]:
    """``secrets`` as an upstream could quote them: as sent, URL-encoded (a query string
    echoed back), JSON-escaped (orjson's escapes, and the ``\\/`` some encoders write for
    a slash). URL-encoded as encoders differ: every reserved character escaped
    (``encodeURIComponent``, ``urlencode``, httpx), or ``/`` kept (Python's ``quote()``,
    yarl and so aiohttp), each in uppercase hex and in the lowercase some write (.NET's
    ``HttpUtility.UrlEncode``). They differ only for a secret with such characters (an
    AWS session token's ``/``, ``+`` and ``=``): a key of letters, digits, ``-`` and
    ``_`` is one form. Longest first, so no form is cut by a shorter one inside it."""
    forms: dict[bytes, None] = {}
    for secret in secrets:
        raw = secret.encode()
        for form in (
            raw,
            *_url_encoded(quote(secret, safe="").encode()),
            *_url_encoded(quote(secret, safe="/").encode()),
            orjson.dumps(secret)[1:-1],
            raw.replace(b"/", b"\\/"),
        ):
            forms[form] = None
    return tuple(sorted(forms, key=len, reverse=True))


def _url_encoded(upper: bytes) -> tuple[bytes, bytes]:
    """A percent-encoded form as written with uppercase hex and with lowercase."""
    return upper, _HEX_ESCAPE.sub(lambda escape: escape.group().lower(), upper)


def starred(body: bytes, needles: tuple[bytes, ...], lead: bytes = b"") -> bytes:
    """``body`` with each of ``needles`` replaced by as many asterisks; ``body`` itself
    (no copy) when it holds none. ``lead``: what all of them begin with (``shared_lead``),
    searched for first."""
    if lead and lead not in body:
        # The common case: one search, not one per form, says no form is there.
        return body
    for needle in needles:
        if needle in body:
            body = body.replace(needle, b"*" * len(needle))
    return body


def shared_lead(needles: tuple[bytes, ...]) -> bytes:
    """What every one of ``needles`` begins with (the forms of one secret share all of it
    before its first escaped character), when long enough to search for first; computed
    once per answer by its reader (not cached: a client's own key may be among them)."""
    if not needles:
        return b""
    # The lead of the first and last in byte order is every one's.
    first, last = min(needles), max(needles)
    size = 0
    while size < len(first) and first[size] == last[size]:
        size += 1
    return first[:size] if size >= _SHORTEST_LEAD else b""


def unfinished_at(data: bytes, needles: tuple[bytes, ...], lead: bytes = b"") -> int:
    """Where the tail of ``data`` that begins one of ``needles`` (longest first, as
    ``quoted_forms`` orders them) starts (``len(data)``: none does). Only the last
    ``len(needle) - 1`` bytes are looked at. ``lead``: as for ``starred``."""
    cut = len(data)
    if data[-1:] in (b"\n", b"\r"):
        # Most chunks end an event, and no credential holds a line end: nothing to hold.
        return cut
    if lead:
        # All forms begin alike: one scan of the tail for where that lead could begin
        # (the common case: nowhere) spares a scan per form. The longest form is first.
        at = data.find(lead[:1], max(0, cut - len(needles[0]) + 1))
        while at != -1 and not lead.startswith(data[at : at + len(lead)]):
            at = data.find(lead[:1], at + 1)
        if at == -1:
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

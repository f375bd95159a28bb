"""Paging of the management API's listings (``ListKeys``, ``ListQuotas``), after Google's
AIP-158: ``page_size``, ``page_token`` in, ``next_page_token`` out.

A listing of hundreds of thousands of keys or subjects in one answer passed the 4 MiB
that gRPC clients of other languages (and grpcurl) accept by default, was built whole
in the gateway's memory, and held the call (and the store) for one pass over every
record. A page is bounded instead: at most ``page_size`` entries, from at most
``MAX_SCANS_PER_PAGE`` SCAN calls.

A page size of 0 (unset) lists everything in one answer, as before paging existed: a
script written then never reads ``next_page_token``, and a default page would have cut
its list short without a word (a key "missing" from it reads as revoked).

A token is opaque to clients: base64url of a small JSON object holding where the
listing stopped (the last config key's id; a SCAN position, whose marks are hashes of
store keys, never a name: a stored key's record is named by the digest of its secret)
and a hash of the request's filters, so that a token given with other filters is
refused rather than answering a list that matches neither.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.management.client_pages import PAGE_SIZE
from extproc.management.quotas import InvalidArgumentError
from extproc.store.scan_pages import ScanPosition, is_mark

# Above this, a page size counts as this: a page of 1000 keys is a few hundred KiB,
# of 1000 subjects' quota states well under the 4 MiB clients accept. The CLI asks for it.
MAX_PAGE_SIZE = PAGE_SIZE
# SCAN calls one page may make (each of COUNT SCAN_COUNT) before it answers, fuller or
# not: filters that pass few records, or a store whose keys are mostly others (usage
# rollups, counters of past windows), must not hold one call for a whole pass.
MAX_SCANS_PER_PAGE = 10
# Config keys one page looks at, in memory, before it answers: as many as its SCAN calls.
CONFIG_KEYS_PER_PAGE = 10_000
# 2: positions hold the mark of a Cluster's primaries ("t").
_VERSION = 2
# A token longer than this is none the gateway gave (a config key's id is its longest part).
_MAX_TOKEN_CHARS = 4096
CONFIG = "config"
STORE = "store"


@dataclass(frozen=True, slots=True)
class PageToken:
    """Where a listing stopped: in the config's keys (after ``config_after``, by id) or in
    the store (at ``position``)."""

    phase: str
    config_after: str = ""
    position: ScanPosition = field(default_factory=ScanPosition)


def page_size(request: Any) -> int:
    """The page size a request asks for: 0 (everything), or 1 to ``MAX_PAGE_SIZE``. A
    request with a page token and no size pages by the most: it was paging already."""
    requested: int = request.page_size
    if requested < 0:
        raise InvalidArgumentError("page_size must be 0 (every entry in one answer) or more")
    if requested == 0 and request.page_token:
        return MAX_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def filters_hash(request: Any) -> str:
    """What a token is bound to: the request's type and every field but the paging ones."""
    filters = type(request)()
    filters.CopyFrom(request)
    filters.ClearField("page_size")
    filters.ClearField("page_token")
    digest = hashlib.sha256(type(request).DESCRIPTOR.full_name.encode())
    digest.update(filters.SerializeToString(deterministic=True))
    return digest.hexdigest()[:16]


def encode(token: PageToken, filters: str) -> str:
    """The ``next_page_token`` that resumes at ``token``, for requests with ``filters``."""
    position = token.position
    body = {
        "v": _VERSION,
        "f": filters,
        "p": token.phase,
        "c": token.config_after,
        "n": position.node,
        "k": position.cursor,
        "a": position.after,
        "u": position.until,
        "t": position.primaries,
    }
    return base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")


def decode(text: str, filters: str) -> PageToken | None:
    """The place a request's ``page_token`` resumes at (None: the first page);
    ``InvalidArgumentError`` for a token this gateway never gave, or one given with other
    filters."""
    if not text:
        return None
    body = _body(text)
    if body.get("f") != filters:
        raise InvalidArgumentError(
            "page_token was given for a listing with other filters: ask with the filters of"
            " the first page, or start again without a page_token"
        )
    position = ScanPosition(body["n"], body["k"], body["a"], body["u"], body["t"])
    return PageToken(body["p"], body["c"], position)


def _body(text: str) -> dict[str, Any]:
    invalid = InvalidArgumentError(
        "page_token is not one this gateway gave out: give the next_page_token of the"
        " answer before as it came, or start again without one"
    )
    if len(text) > _MAX_TOKEN_CHARS:
        raise invalid
    try:
        body = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        raise invalid from None
    shapes = {
        "v": int, "f": str, "p": str, "c": str, "n": str, "k": int, "a": str, "u": int, "t": str,
    }  # fmt: skip
    if not isinstance(body, dict) or set(body) != set(shapes):
        raise invalid
    if any(type(body[name]) is not shape for name, shape in shapes.items()):
        raise invalid
    if body["v"] != _VERSION or body["p"] not in (CONFIG, STORE) or min(body["k"], body["u"]) < 0:
        raise invalid
    if any(body[name] and not is_mark(body[name]) for name in ("a", "t")):
        raise invalid
    return body

"""Tool call ids a provider takes, for histories that carry other providers' ids.

Anthropic (``tool_use.id``, ``tool_result.tool_use_id``: ``^[a-zA-Z0-9_-]+$``) and
Bedrock's Converse (``toolUseId``: 1 to 64 of the same characters; AWS's API reference,
ToolUseBlock and ToolResultBlock) refuse with a 400 an id outside that rule, and an
OpenAI client's history can hold ids another provider made (``functions.get_weather:0``
from some OpenAI-compatible models, ids longer than 64 characters). One rule that fits
both providers keeps the mapping the same wherever a conversation goes, failover included.
"""

from __future__ import annotations

import hashlib
import re

# What both providers take; newer Bedrock pages also allow "." and ":", Anthropic does not.
_FITS = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_OUTSIDE = re.compile(r"[^a-zA-Z0-9_-]")
MAX_LENGTH = 64
# Hex digits of the original id's SHA-256 that end a rewritten id: 64 bits keep two ids of
# one conversation apart where their readable parts are the same.
_DIGEST_LENGTH = 16


def provider_tool_call_id(call_id: str) -> str:
    """The id to send for a client's tool call id: the id itself when providers take it.

    Another id becomes its first characters with the others replaced by ``_``, then ``-``
    and a digest of the whole id: the same id gives the same provider id in the call, in
    its result and in every later request of the conversation (nothing is stored), and ids
    that differ only where they are rewritten or cut (``a.b`` and ``a:b``) stay apart, so
    each result keeps its call. An answer's new calls carry the provider's own ids, which
    fit, so nothing maps back.
    """
    if _FITS.fullmatch(call_id):
        return call_id
    # The body came through orjson, which refuses lone surrogates: the id encodes.
    digest = hashlib.sha256(call_id.encode()).hexdigest()
    readable_length = MAX_LENGTH - _DIGEST_LENGTH - 1
    # Cut before replacing: one character is replaced by one, and an id can be megabytes.
    readable = _OUTSIDE.sub("_", call_id[:readable_length])
    suffix = digest[:_DIGEST_LENGTH]
    return f"{readable}-{suffix}" if readable else suffix

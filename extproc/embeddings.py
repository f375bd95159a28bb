"""OpenAI embeddings requests: what a valid body is, and what its input costs.

An embeddings call (``POST /v1/embeddings``) reads ``input`` and generates no text:
the provider bills its prompt tokens only, so the gateway reserves, settles, counts
and prices those alone. ``input`` takes four shapes, as OpenAI's API does:

- one string;
- an array of strings (one vector each);
- an array of token ids (one vector for the tokens);
- an array of arrays of token ids (one vector each).

The checks are the ones that decide what the gateway counts: a request the provider
would refuse anyway is refused here first with the same meaning (400, naming the
field), before it reserves quota or reaches the provider. Token ids are counted as
given, one token each; text is estimated at one token per four characters, as for
chat prompts (``quota.estimate``), and the provider's own count settles it.

An answer that came whole without the provider's count (a provider that does not
report usage, a body that is not JSON) still embedded the input, and the provider
bills it: the request is charged that estimate (``usage_estimated``), as a stream
without a usage report is, so the quota, the log line, the metrics, the rollup and
the span all carry the same tokens (``stages.response``).
"""

from __future__ import annotations

from typing import Any

from extproc.errors import BadRequestError
from extproc.openai_inputs import check_items, estimate_tokens, positive_int
from extproc.quota.estimate import CHARS_PER_TOKEN

# OpenAI's limit on the inputs of one request.
MAX_INPUTS = 2048
ENCODING_FORMATS = frozenset({"float", "base64"})


def check_embeddings_body(body: dict[str, Any]) -> None:
    """Refuse a body whose ``input``, ``encoding_format`` or ``dimensions`` is not valid."""
    if "messages" in body:
        raise BadRequestError(
            "this is an embeddings route: send 'input', not 'messages' "
            "(chat completions are served on /v1/chat/completions)",
            param="messages",
        )
    _check_input(body.get("input"))
    encoding = body.get("encoding_format")
    # A list or an object is no format either (and cannot be looked up in a set).
    if encoding is not None and not (isinstance(encoding, str) and encoding in ENCODING_FORMATS):
        raise BadRequestError(
            '\'encoding_format\' must be "float" or "base64"', param="encoding_format"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and not positive_int(dimensions):
        raise BadRequestError("'dimensions' must be an integer >= 1", param="dimensions")
    if body.get("stream") not in (None, False):
        raise BadRequestError("embeddings cannot be streamed", param="stream")


def _check_input(value: Any) -> None:
    if isinstance(value, str):
        if not value:
            raise BadRequestError("'input' must not be an empty string", param="input")
        return
    if not isinstance(value, list) or not value:
        raise BadRequestError(
            "'input' is required: a string, an array of strings, an array of token ids "
            "or an array of arrays of token ids",
            param="input",
        )
    if len(value) > MAX_INPUTS:
        raise BadRequestError(
            f"'input' has {len(value)} entries; the limit is {MAX_INPUTS}", param="input"
        )
    check_items(value, "input", empty_strings=False)


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """The input's tokens: token ids as given, text at one token per four characters
    (at least one per string, which the provider never bills at zero).

    Vertex's ``title`` (``translators.vertex_embeddings``) goes with every text, and the
    model embeds it with each: it counts once per text. It is counted whatever the
    provider (a failover chain may send it to Vertex): for one that ignores it the
    reservation is that much higher, and the settlement, from its count, exact."""
    value = body.get("input")
    tokens = estimate_tokens(value)
    title = body.get("title")
    if isinstance(title, str) and title:
        texts = len(value) if isinstance(value, list) else 1
        tokens += texts * (len(title) // CHARS_PER_TOKEN)
    return tokens

"""OpenAI embeddings, passed through to an OpenAI-compatible provider.

The request goes as the client sent it, under the provider's name for the model.
The answer (``{"object": "list", "data": [...], "model": M, "usage": {"prompt_tokens":
N, "total_tokens": N}}``) passes through unchanged; the gateway reads its usage, which
has no completion: an embedding generates no tokens.

An answer is mostly vectors (a batch of 2,048 inputs is 16 MiB of base64, four times
that as JSON floats), and only its last bytes are read: OpenAI writes ``model`` and
``usage`` after ``data``, and the small object after the last ``"usage"`` key is
parsed alone, so the event loop never parses megabytes of numbers to find two
integers. Vectors hold no ``"`` (floats, or base64 strings), so the key cannot be
faked by them. An answer laid out otherwise (``usage`` first) is parsed whole, up to
``MAX_WHOLE_PARSE`` bytes; past that its usage counts as not reported, and the
input's estimate is charged in every ledger (``stages.cut_answer``).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from extproc.context import Usage
from extproc.translators.answer_errors import error_in_answer
from extproc.translators.base import BufferedBodyReader
from extproc.translators.token_counts import token_count

# Under the provider's API path (``/v1`` for OpenAI).
ENDPOINT = "/embeddings"


def usage_from_embeddings(value: Any) -> Usage | None:
    """OpenAI's embeddings usage: ``prompt_tokens`` (and ``total_tokens``, the same);
    None when absent or malformed. An OpenAI-compatible provider that reports
    ``total_tokens`` alone (Voyage AI's embeddings do) is read from it: an embedding
    generates nothing, so the total is the input."""
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens", value.get("total_tokens"))
    prompt = token_count(prompt)
    if prompt is None:
        return None
    return Usage(prompt, 0, prompt, 0)


# How far from the end ``model`` and ``usage`` are looked for.
TAIL_BYTES = 4096
# The largest answer parsed whole when its tail does not hold the usage.
MAX_WHOLE_PARSE = 4 * 1024 * 1024
# One level of nesting: OpenAI may add objects such as ``prompt_tokens_details``.
_USAGE = re.compile(rb'"usage"\s*:\s*(\{(?:[^{}]|\{[^{}]*\})*\})')
_MODEL = re.compile(rb'"model"\s*:\s*("(?:[^"\\]|\\.){0,512}")')


class EmbeddingsReader(BufferedBodyReader):
    """A buffered embeddings answer: reads usage and model from its tail, passes bytes
    through (the module docstring says why only the tail)."""

    read_usage = staticmethod(usage_from_embeddings)

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        self._parts.append(chunk)
        if not end_of_stream:
            return None
        body = b"".join(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = []
        tail = body[-TAIL_BYTES:]
        usage = _last(_USAGE, tail)
        if usage is not None:
            self.usage = self.read_usage(usage)
            model = _last(_MODEL, tail)
            self.response_model = model if isinstance(model, str) else None
        elif len(body) <= MAX_WHOLE_PARSE:
            super().feed(body, True)
            if error_in_answer(self.answer) is None:
                # Nothing reads an embeddings answer's vectors; an error in it is read
                # (stages.response: a 200 whose body is the provider's error).
                self.answer = None
        return None


def _last(pattern: re.Pattern[bytes], tail: bytes) -> Any:
    """The JSON value of the pattern's last match in ``tail``, or None."""
    found = pattern.findall(tail)
    if not found:
        return None
    try:
        return orjson.loads(found[-1])
    except orjson.JSONDecodeError:
        return None

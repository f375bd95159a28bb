"""OpenAI legacy text completions, passed through to an OpenAI-compatible provider.

What the gateway touches is chat's own wire, so chat's code serves it
(``openai_openai``): the request goes under the provider's name for the model, and a
stream asks for ``stream_options.include_usage`` when the client did not (the
provider's usage-only chunk, ``choices: []``, is then hidden from that client); the
answer (``{"object": "text_completion", "choices": [{"text", ...}], "usage":
{"prompt_tokens", "completion_tokens", "total_tokens"}}``, or its chunks) passes
through, its usage read where chat's is, by ``usage_from_object``. No other provider
type has the API, and none is translated to (``backends.check_pair``).
"""

from __future__ import annotations

from extproc.translators import openai_openai
from extproc.translators.base import ResponseTranslator

# Under the provider's API path (``/v1`` for OpenAI).
ENDPOINT = "/completions"


def response_reader(*, streaming: bool, hide_usage: bool, choices: int) -> ResponseTranslator:
    """The reader of a provider's answer: chat's, for a JSON answer or an SSE stream
    (``hide_usage``: its usage chunk is the one the gateway asked for; ``choices``: how
    many the stream must finish before it is whole, one per prompt and ``n``)."""
    if streaming:
        return openai_openai.ChunkStreamReader(hide_usage_chunk=hide_usage, choices=choices)
    return openai_openai.CompletionReader()

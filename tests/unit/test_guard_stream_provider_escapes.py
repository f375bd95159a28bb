"""A provider's own JSON escapes in a streamed event cannot hide a match, wherever Envoy
cuts the body.

A provider writes each SSE event as JSON, and may escape any character of the text in it
(``jane\\u0040example.com``). Envoy hands the gateway the body in chunks cut anywhere,
inside an escape too (``\\u00`` | ``40``). The guard reads an event only once it is whole,
from the JSON parse of its data, so the text it matches is the decoded text the client
shows: this pins that no split of the provider's escapes lets an address by.

Text the model itself writes with escapes (a structured output streamed as
``"jane\\u0040example.com"`` in its content) is another matter: streamed text deltas are
read as written, split or not (docs: guardrails, Limits).
"""

from __future__ import annotations

import json

import orjson
import pytest

from extproc.testing import client_body
from tests.unit.guard_helpers import openai_stream_text
from tests.unit.sse_play import play_sse
from tests.unit.test_guard_stream_tool_args_json import DONE, OPENAI_AUTH, gateway

REQUEST = orjson.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "go"}]}
)


def event(text: str | None, finish: str | None = None) -> bytes:
    """A chunk event as an encoder that escapes every ``@`` writes it."""
    delta = {"content": text} if text is not None else {}
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + json.dumps(chunk).replace("@", "\\u0040").encode() + b"\n\n"


STREAM = event("mail jane@exa") + event("mple.com now") + event(None, "stop") + DONE
ESCAPE = STREAM.index(b"\\u0040")


@pytest.mark.parametrize("cut", range(ESCAPE - 1, ESCAPE + 7))
async def test_a_provider_escape_cut_between_body_chunks_hides_no_match(cut: int) -> None:
    chunks = [STREAM[:cut], STREAM[cut:]]
    answers = await play_sse(
        gateway("pii").processor, "/v1/chat/completions", OPENAI_AUTH, REQUEST, chunks
    )
    assert openai_stream_text(client_body(chunks, answers)) == "mail <EMAIL> now"

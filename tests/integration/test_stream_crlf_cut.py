"""A provider that ends its SSE lines with CRLF (as servers built on sse-starlette do) and
whose stream's body ends after an event's line, before the blank line that ends the event,
through the real Envoy and gateway.

The client asked for usage, so the provider's bytes reach it as they came, in whole
events. The official openai client must read each chunk, the cut one completed, and then
raise the gateway's error ("the provider's stream ended before it was complete"), not a
JSON error of its own from the cut event's line joined with the gateway's error event.
"""

from __future__ import annotations

import openai
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog

ENDED_EARLY = "the provider's stream ended before it was complete"


def test_an_openai_client_reads_every_chunk_then_the_gateways_error(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="team1-key", max_retries=0)
    pieces: list[str] = []
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Tell me a long story about line ends."}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-fault": "crlf=1;end_before_blank=2"},
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(openai.APIError) as raised:
            for chunk in response.parse():
                pieces += [c.delta.content or "" for c in chunk.choices]
    assert ENDED_EARLY in raised.value.message
    # The role chunk's empty text, two whole content chunks and the one cut before its end.
    assert len(pieces) == 4 and all(pieces[1:])
    [line] = gateway_log.for_request(request_id)
    assert (line["http_status_code"], line["outcome"]) == (200, "upstream_error")
    assert (line["error_message"], line["usage_estimated"]) == (ENDED_EARLY, True)
    assert line["completion_tokens"] >= -(-len("".join(pieces)) // 4)

"""A provider's error whose client left before its body came is counted by the provider's
status in ``aigw_upstream_errors_total``.

That counter tells upstream errors by the upstream side's own status (docs/metrics.md):
an operator's "provider X answers 429s" panel selects it by ``status_code``. A client
that hung up while the error's body was in flight (a client's short timeout on an
overloaded provider is common) changed nothing of what the provider did, but the error
was counted as ``status_code="aborted"``, a value no upstream ever answers, and so
escaped a panel or alert selecting ``429`` or ``5..``. Now it is counted under the
provider's status (Anthropic's own ``529`` where an OpenAI client would have got a
``503``), while ``aigw_requests_total``, which counts what the client got, and the log
line still say ``aborted``.
"""

from __future__ import annotations

import orjson
import pytest

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_headers,
    run_stream,
    run_stream_reset,
)
from tests.unit.sse_play import only_line
from tests.unit.test_client_status_recorded import JSON, KEY, samples
from tests.unit.test_response_path import first_chunk


def chat(model: str) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}]})


@pytest.mark.parametrize("reset", [False, True], ids=["stream-closed", "stream-cancelled"])
@pytest.mark.parametrize(
    ("model", "provider_status"),
    [("gpt-4o-mini", 429), ("gpt-4o-mini", 503), ("claude-3-5-haiku-latest", 529)],
)
async def test_an_error_whose_client_left_before_its_body_counts_under_its_status(
    processor: Processor, services: Services, model: str, provider_status: int, reset: bool
) -> None:
    """The full path: the provider's error status came in its response headers, and the
    stream ended (closed, or cancelled by Envoy's reset) before its body message."""
    play = run_stream_reset if reset else run_stream
    await play(
        processor,
        [
            request_headers("/v1/chat/completions", headers=KEY),
            request_body(chat(model)),
            response_headers(provider_status, JSON),
        ],
    )
    assert samples(services, "aigw_upstream_errors_total") == {str(provider_status): 1.0}
    # What the client got: nothing whole, as before.
    assert samples(services, "aigw_requests_total") == {"aborted": 1.0}
    line = only_line(services)
    assert (line["outcome"], line["upstream_status_code"]) == ("aborted", provider_status)


async def test_a_lean_error_whose_client_left_mid_body_counts_under_its_status(
    processor: Processor, services: Services
) -> None:
    """The lean path: the status came with the error's first STREAMED chunk."""
    await run_stream_reset(
        processor,
        [
            request_headers("/openai/gpt-4o-mini", headers=KEY),
            request_body(chat("gpt-4o-mini")),
            first_chunk(b'{"error": {"message": "slow', 429),
        ],
    )
    assert samples(services, "aigw_upstream_errors_total") == {"429": 1.0}
    assert samples(services, "aigw_requests_total") == {"aborted": 1.0}

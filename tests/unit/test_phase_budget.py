"""benchmarks.phase_budget measures the path a real request takes: each of its requests
is answered and billed as one through Envoy would be, not refused or cut."""

from __future__ import annotations

import pytest

from benchmarks.phase_budget import CONFIG, STREAM_CHUNK_BYTES, messages
from extproc.config import load_config
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import processor_for, run_stream
from tests.unit.conftest import MemoryLog


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_each_request_of_the_benchmark_is_answered_and_billed(stream: bool) -> None:
    log = MemoryLog()
    processor = processor_for(load_config(CONFIG, environ={}), Services(GatewayMetrics(), log))
    sent = messages(stream)
    answers = await run_stream(processor, [message for _, message in sent])
    assert len(answers) == len(sent)
    [line] = log.lines()
    assert (line["outcome"], line["http_status_code"], line["usage_reported"]) == (
        "completed",
        200,
        True,
    )
    assert line["stream"] is stream
    if stream:
        chunks = [message for phase, message in sent if phase == "response_body"]
        # Cut across events, as Envoy passes a fast stream on.
        assert len(chunks) > 5
        assert all(len(c.response_body.body) == STREAM_CHUNK_BYTES for c in chunks[:-1])
        assert line["completion_tokens"] == 99

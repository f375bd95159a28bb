"""A guarded stream's decisions reach its log line however the stream ended.

A client that reads ``data: [DONE]`` may hang up at once, and Envoy then drops the empty
end of stream that follows: the request was answered whole (the response stage takes the
terminal event for the end), yet the guards' decisions were recorded only on that end of
stream, so the log line and ``aigw_guardrail_decisions_total`` said nothing of a mask the
client had been shown (seen in the integration suite, under load, for an address masked
in streamed tool-call arguments).
"""

from __future__ import annotations

import orjson
import pytest

from extproc.testing import client_body
from tests.unit.guard_helpers import config_with, openai_chunk
from tests.unit.sse_play import play_sse
from tests.unit.test_accounting_review_streams import OPENAI_ERROR, sample
from tests.unit.test_guard_flow import Gateway

POLICIES = {
    "policies": [
        {"name": "guarded", "response": [
            {"name": "api-keys", "patterns": [r"sk-[A-Za-z0-9]{8,}"], "message": "no keys"},
            {"name": "pii-out", "builtins": ["EMAIL"], "action": "mask"},
        ]},
    ]
}  # fmt: skip
AUTH = {"authorization": "Bearer team1-key"}
BODY = orjson.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
)
DONE = b"data: [DONE]\n\n"


def guarded() -> Gateway:
    return Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "guarded"}}))


@pytest.mark.parametrize("ended", [True, False], ids=["end of stream", "client left at DONE"])
@pytest.mark.parametrize(
    ("text", "pii"), [("Write to jane.doe@example.com", "mask"), ("Nothing to hide", "pass")]
)
async def test_the_guards_decisions_are_logged_once_the_terminal_event_passed(
    ended: bool, text: str, pii: str
) -> None:
    gate = guarded()
    chunks = [openai_chunk(text), openai_chunk(None, "stop") + DONE]
    await play_sse(gate.processor, "/v1/chat/completions", AUTH, BODY, chunks, ended=ended)
    line = gate.log()
    assert line["outcome"] == "completed"
    assert line["guardrails"] == [
        {"guard": "api-keys", "phase": "response", "action": "pass"},
        {"guard": "pii-out", "phase": "response", "action": pii},
    ]
    assert gate.decisions(guard="pii-out", action=pii) == 1


async def test_a_stream_cut_before_its_end_logs_the_masks_it_made_and_no_pass() -> None:
    # Cut mid-answer: what was masked was masked; no guard saw the whole answer pass.
    gate = guarded()
    chunks = [openai_chunk("Write to jane.doe@example.com today."), openai_chunk(" And")]
    await play_sse(gate.processor, "/v1/chat/completions", AUTH, BODY, chunks, ended=False)
    line = gate.log()
    assert line["outcome"] == "aborted"
    assert line["guardrails"] == [{"guard": "pii-out", "phase": "response", "action": "mask"}]


@pytest.mark.parametrize("ended", [True, False], ids=["end of stream", "client left at refusal"])
async def test_a_stream_a_guard_refused_is_counted_under_its_status_however_it_ended(
    ended: bool,
) -> None:
    # The refusal is the last thing the client reads; one that hangs up then leaves
    # Envoy to reset the stream before its end. The line said rejected, but
    # aigw_requests_total counted it aborted, apart from the same refusal read to Envoy's
    # end of stream (and from the log line).
    gate = guarded()
    chunks = [
        openai_chunk("Your key is sk-abcdefghijkl, keep it."),
        openai_chunk(None, "stop") + DONE,
    ]
    sent = chunks if ended else chunks[:1]
    await play_sse(gate.processor, "/v1/chat/completions", AUTH, BODY, sent, ended=ended)
    line = gate.log()
    assert (line["outcome"], line["http_status_code"]) == ("rejected", 200)
    assert line["error_code"] == "guardrail_rejected"
    assert sample(gate.services, "aigw_requests_total", status_code="200") == 1
    assert sample(gate.services, "aigw_requests_total", status_code="aborted") == 0


@pytest.mark.parametrize(
    "after",
    [OPENAI_ERROR, openai_chunk(" and the rest")],
    ids=["provider's error event", "stream ended early"],
)
async def test_a_provider_failing_after_a_guards_refusal_leaves_the_refusal_logged(
    after: bytes,
) -> None:
    # A client that reads on after the refusal gets nothing more; the provider then failed
    # its stream (its error event, or a body ended before [DONE]). The line named that
    # failure (upstream_error, "The model is overloaded"), which the client never saw,
    # instead of the refusal it read last.
    gate = guarded()
    chunks = [openai_chunk("Your key is sk-abcdefghijkl, keep it."), after]
    answers = await play_sse(gate.processor, "/v1/chat/completions", AUTH, BODY, chunks)
    received = client_body(chunks, answers[3:])
    assert received.count(b'"error"') == 1 and b"no keys" in received
    line = gate.log()
    assert (line["outcome"], line["error_code"], line["error_message"]) == (
        "rejected",
        "guardrail_rejected",
        "no keys",
    )
    # Charged what the provider produced, as before; its failure is still counted.
    assert line["usage_estimated"] is True
    assert sample(gate.services, "aigw_upstream_errors_total", status_code="stream_error") == 1
    # And the request is counted as the line says, under the 200 the client got: counted
    # stream_error, the error-rate alert took the guard's refusal for a provider failure.
    assert sample(gate.services, "aigw_requests_total", status_code="200") == 1
    assert sample(gate.services, "aigw_requests_total", status_code="stream_error") == 0

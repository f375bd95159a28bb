"""An Anthropic stream that fails before its message began is charged nothing.

Anthropic may answer a streamed request with a 200 whose first event is ``event: error``
(``overloaded_error``): the streamed form of its 529, sent before ``message_start``, so
before it read the prompt and reported its input. It bills nothing for it, as for the
529, and the gateway charged the prompt's estimate instead (quota, log line, metrics,
rollup). Now it is charged as the same error answered with its status is: nothing; the
log line still names the provider's error (``outcome: upstream_error``). An error after
``message_start`` keeps being charged what was reported and streamed.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.quota_helpers import capped, used_tokens

BUDGET = 100_000
TEAM1 = {"authorization": "Bearer team1-key"}
SSE = {"content-type": "text/event-stream"}
OVERLOADED = (
    b"event: error\n"
    b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
)
MESSAGE_START = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"claude-sonnet-4-0","content":[],"stop_reason":null,'
    b'"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
)
PING = b'event: ping\ndata: {"type":"ping"}\n\n'
MESSAGES = {"model": "claude-sonnet-4-0", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "What changed this week?"}]}  # fmt: skip
CHAT = {"model": "claude-sonnet-4-0", "stream": True,
        "messages": [{"role": "user", "content": "What changed this week?"}]}  # fmt: skip
# The client API -> its path, its body, the auth header.
CLIENTS = {
    "anthropic messages": ("/v1/messages", MESSAGES, {"x-api-key": "team1-key"}),
    "openai chat": ("/anthropic/chat/completions", CHAT, TEAM1),
}
BILLED = ("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "usage_estimated")


async def streamed(
    quota_store: QuotaStore, client: str, status: int, answer: bytes
) -> tuple[dict[str, Any], Services]:
    """The log line of one request of key team1 answered ``answer`` with ``status``."""
    processor, services = capped(quota_store, BUDGET)
    path, body, auth = CLIENTS[client]
    headers = SSE if status == 200 else {"content-type": "application/json"}
    await run_stream(
        processor,
        [
            request_headers(path, headers=auth),
            request_body(orjson.dumps(body)),
            response_headers(status, headers),
            response_body(answer, end_of_stream=True),
        ],
    )
    await quota_store.flush()
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line, services


def token_metrics(services: Services) -> list[float]:
    return [
        sample.value
        for family in services.metrics.registry.collect()
        if family.name == "tokens_consumed"
        for sample in family.samples
        if sample.name == "tokens_consumed_total"
    ]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("answer", [OVERLOADED, PING + OVERLOADED], ids=["first", "after-ping"])
async def test_an_overload_before_message_start_is_charged_nothing(
    quota_store: QuotaStore, client: str, answer: bytes
) -> None:
    line, services = await streamed(quota_store, client, 200, answer)
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (0, 0, 0)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, False)
    assert line["outcome"] == "upstream_error"
    assert line["error_message"] == "Overloaded"
    assert token_metrics(services) == []
    assert await used_tokens(quota_store, BUDGET) == 0


@pytest.mark.parametrize("client", CLIENTS)
async def test_it_is_billed_as_the_same_overload_answered_with_its_529(
    quota_store: QuotaStore, client: str
) -> None:
    streamed_line, _ = await streamed(quota_store, client, 200, OVERLOADED)
    error = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    status_line, _ = await streamed(quota_store, client, 529, error)
    assert {k: streamed_line[k] for k in BILLED} == {k: status_line[k] for k in BILLED}


@pytest.mark.parametrize("client", CLIENTS)
async def test_an_overload_after_message_start_is_still_charged_the_reported_prompt(
    quota_store: QuotaStore, client: str
) -> None:
    line, _ = await streamed(quota_store, client, 200, MESSAGE_START + OVERLOADED)
    assert (line["prompt_tokens"], line["usage_estimated"]) == (25, True)
    assert line["outcome"] == "upstream_error"
    assert await used_tokens(quota_store, BUDGET) == line["total_tokens"] > 0

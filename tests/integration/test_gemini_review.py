"""A review of Gemini's own API end to end: Google's ``google-genai`` SDK and plain REST
calls, through real Envoy and the gateway, to Google's models on the mock's Vertex AI.

What a client of Gemini's API reads (Envoy's own refusals, the answer's framing) and
what reaches Vertex (the body of a token count), with the config of
``test_gemini_api``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from google.genai import errors

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    metric,
    mock_requests,
    running_stack,
    scrape,
    wait_for,
    write_config,
)
from tests.integration.test_gemini_api import CLIENT_KEY, PROMPT, client, gemini_config

LOCATION = "/v1/projects/mock-project/locations/us-east5"
CONTENTS = [{"role": "user", "parts": [{"text": PROMPT}]}]


@pytest.fixture(scope="module")
def review(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("gemini-review")
    with running_stack(workdir, write_config(workdir, gemini_config())) as running:
        yield running


@pytest.fixture
def gateway_log(review: LocalStack) -> GatewayLog:
    return GatewayLog(review.gateway_log)


def rest(stack: LocalStack, path: str, body: dict[str, Any]) -> httpx.Response:
    """One call of Gemini's REST API as its documentation writes it (no SDK)."""
    return httpx.post(
        f"{stack.base_url}/v1beta/models/{path}",
        headers={"x-goog-api-key": CLIENT_KEY, "content-type": "application/json"},
        content=orjson.dumps(body),
        timeout=30,
    )


def test_envoys_own_refusal_reaches_the_sdk_with_googles_status(review: LocalStack) -> None:
    # Over the listener's buffer: Envoy answers before the gateway sees the body, with
    # its local reply. The SDK reads Google's error.status; an OpenAI-shaped body has none.
    with pytest.raises(errors.ClientError) as refused:
        client(review).models.generate_content(model="gemini-2.5-flash", contents="x" * 2_000_000)
    assert refused.value.code == 413
    assert refused.value.status is not None, refused.value.details
    assert refused.value.message


def test_a_count_of_a_whole_request_reaches_vertex_without_the_wrapper(
    review: LocalStack,
) -> None:
    # The documented way to count a system instruction with Gemini's API. Vertex's own
    # CountTokensRequest has no generateContentRequest field (the mock takes it, Vertex
    # answers 400 "Unknown name"): what Vertex gets must be its own form.
    wrapped = {
        "generateContentRequest": {
            "model": "models/gemini-2.5-flash",
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": CONTENTS,
        }
    }
    answer = rest(review, "gemini-2.5-flash:countTokens", wrapped)
    assert answer.status_code == 200, answer.text
    [sent] = [
        r for r in mock_requests(review) if r["path"].endswith("gemini-2.5-flash:countTokens")
    ][-1:]
    body = orjson.loads(sent["body"])
    assert "generateContentRequest" not in body
    assert body["contents"] == CONTENTS and "systemInstruction" in body


def test_a_stream_asked_for_without_alt_sse_is_read_as_the_client_asked(
    review: LocalStack, gateway_log: GatewayLog
) -> None:
    # Google answers streamGenerateContent without ?alt=sse with one JSON array of
    # answers. A client reading that array must get one, or a refusal it can read: never
    # Server-Sent Events it cannot parse.
    answer = rest(review, "gemini-2.5-flash:streamGenerateContent", {"contents": CONTENTS})
    if answer.status_code == 400:
        assert answer.json()["error"]["status"] == "INVALID_ARGUMENT"
        return
    assert answer.status_code == 200
    assert not answer.headers["content-type"].startswith("text/event-stream")
    chunks = answer.json()
    assert isinstance(chunks, list) and chunks[-1]["usageMetadata"]["candidatesTokenCount"]
    [line] = gateway_log.for_request(answer.headers["x-request-id"])
    assert line["usage_reported"] is True


def test_a_stream_the_sdk_stops_reading_is_charged_what_it_carried(
    review: LocalStack, gateway_log: GatewayLog
) -> None:
    # The SDK's iterator closed after the first chunk: the log line says the answer was
    # cut, and charges what Gemini had counted by then (its running counts).
    slow = client(review, **{"x-mock-fault": "interval=0.3;chunks=8"})
    chunks = slow.models.generate_content_stream(model="gemini-2.5-flash", contents=PROMPT)
    first = next(iter(chunks))
    request_id = first.sdk_http_response.headers["x-request-id"]
    chunks.close()

    [line] = gateway_log.for_request(request_id)
    assert line["outcome"] == "aborted"
    assert line["prompt_tokens"] == first.usage_metadata.prompt_token_count
    assert line["completion_tokens"] >= (first.usage_metadata.candidates_token_count or 0) > 0


def gemini_tokens(stack: LocalStack) -> list[float]:
    """tokens_consumed_total on Gemini: prompt, completion."""
    samples = scrape(stack.metrics_url)
    return [
        metric(samples, "tokens_consumed_total", model="gemini-2.5-flash", token_type=kind)
        for kind in ("prompt", "completion")
    ]


@pytest.mark.parametrize(
    ("fault", "charged"), [("error_first=429", False), ("error_after=2", True)]
)
def test_googles_error_as_a_streams_first_event_is_charged_nothing(
    review: LocalStack, gateway_log: GatewayLog, fault: str, charged: bool
) -> None:
    """Google's 200, then its RESOURCE_EXHAUSTED as the stream's first event: the
    streamed form of its 429, which bills nothing, and the SDK raises it as one. It was
    charged the prompt estimate in the log line and tokens_consumed_total. The control:
    Google's error after two pieces of the answer is charged what was delivered."""
    before, seen = gemini_tokens(review), len(gateway_log.lines())
    chunks = client(review, **{"x-mock-fault": fault}).models.generate_content_stream(
        model="gemini-2.5-flash", contents=PROMPT
    )
    with pytest.raises(errors.APIError) as raised:
        for _ in chunks:
            pass
    if not charged:
        assert (raised.value.code, raised.value.status) == (429, "RESOURCE_EXHAUSTED")
    [line] = wait_for(lambda: gateway_log.lines()[seen:])
    assert (line["http_status_code"], line["outcome"]) == (200, "upstream_error")
    tokens = [line["prompt_tokens"], line["completion_tokens"]]
    counted = [now - then for now, then in zip(gemini_tokens(review), before, strict=True)]
    assert counted == tokens
    if charged:
        assert line["usage_estimated"] is True and tokens[0] > 0 and tokens[1] > 0
    else:
        assert (tokens, line["usage_estimated"], line["cost_usd"]) == ([0, 0], False, 0)

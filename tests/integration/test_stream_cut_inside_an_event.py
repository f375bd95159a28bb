"""A provider's stream whose body ends inside an event or frame, through the real stack.

The mock's ``end_inside`` fault sends two content events (frames, for Bedrock), the first
half of the next, then ends the body cleanly: what a proxy makes of an upstream reset
mid-line. Through Envoy, each official SDK must raise the gateway's error, in the shape of
the API it speaks ("the provider's stream ended before it was complete"), as for a stream
cut between events, not a parse error of its own (a JSON error, botocore's
``ChecksumMismatch``); and the request is logged as a stream its provider ended early,
charged the text streamed.

One stack serves every test: Envoy's listener on HTTPS, as boto3 sends its bearer token
over TLS only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from botocore.exceptions import EventStreamError

from tests.integration.conftest import GatewayLog
from tests.integration.test_stream_failed_before_answer import (
    CONVERSE_MODEL,
    PROMPT,
    TlsStack,
    bedrock_client,
    tls_stack,
)

FAULT = "end_inside=2"
ENDED_EARLY = "the provider's stream ended before it was complete"
KEYS = {"cut-chat": "cut-chat-key-2a71", "cut-messages": "cut-messages-key-8d03",
        "cut-converse": "cut-converse-key-40be"}  # fmt: skip


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    with tls_stack(tmp_path_factory.mktemp("cut-inside-an-event"), KEYS) as running:
        yield running


def line_of(tls: TlsStack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(tls.stack.gateway_log).for_request(request_id)
    return line


def assert_logged_as_ended_early(line: dict[str, Any], text: str) -> None:
    """A stream its provider ended early: the error named, the text streamed charged."""
    assert (line["http_status_code"], line["outcome"]) == (200, "upstream_error")
    assert (line["error_code"], line["error_message"]) == ("invalid_upstream_response", ENDED_EARLY)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    # The two whole pieces' text at one token per four characters, at least (the cut
    # event's text counts too where its value came whole, once).
    assert line["completion_tokens"] >= -(-len(text) // 4) >= 1
    assert line["prompt_tokens"] >= 1


# Bedrock behind each client too: the same message and code as every other translation
# (before, Bedrock's translations worded the cut their own way, and Claude on Bedrock
# logged it as api_error).
@pytest.mark.parametrize("model", ["gpt-4o-mini", CONVERSE_MODEL], ids=["openai", "bedrock"])
def test_an_openai_client_reads_the_gateways_error(tls: TlsStack, model: str) -> None:
    client = openai.OpenAI(
        base_url=f"{tls.url}/v1",
        api_key=KEYS["cut-chat"],
        max_retries=0,
        http_client=httpx.Client(verify=str(tls.ca), timeout=30.0),
    )
    text = ""
    with client.chat.completions.with_streaming_response.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        extra_headers={"x-mock-fault": FAULT},
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(openai.APIError) as raised:
            for chunk in response.parse():
                text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert raised.value.message == ENDED_EARLY
    assert text  # the two whole pieces
    assert_logged_as_ended_early(line_of(tls, request_id), text)


@pytest.mark.parametrize(
    "model", ["claude-3-5-haiku-latest", CONVERSE_MODEL], ids=["anthropic", "bedrock"]
)
def test_an_anthropic_client_reads_the_gateways_error(tls: TlsStack, model: str) -> None:
    client = anthropic.Anthropic(
        base_url=tls.url,
        api_key=KEYS["cut-messages"],
        max_retries=0,
        http_client=httpx2.Client(verify=str(tls.ca), timeout=30.0),
    )
    text = ""
    with client.messages.with_streaming_response.create(
        model=model,
        max_tokens=200,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        extra_headers={"x-mock-fault": FAULT},
    ) as response:
        request_id = response.headers["x-request-id"]
        # Was a ValueError: the SDK's JSON parse of the cut event, closed by a blank line.
        with pytest.raises(anthropic.APIStatusError) as raised:
            for event in response.parse():
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    text += event.delta.text
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": ENDED_EARLY},
    }
    assert text
    line = line_of(tls, request_id)
    assert_logged_as_ended_early(line, text)


def test_a_boto3_client_reads_the_gateways_exception(
    tls: TlsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", KEYS["cut-converse"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    answer = bedrock_client(tls, "cut-converse", FAULT).converse_stream(
        modelId=CONVERSE_MODEL, messages=[{"role": "user", "content": [{"text": PROMPT}]}]
    )
    text = ""
    # Was botocore's ChecksumMismatch: it read the gateway's frame as the cut frame's rest.
    with pytest.raises(EventStreamError) as raised:
        for event in answer["stream"]:
            text += event.get("contentBlockDelta", {}).get("delta", {}).get("text", "")
    error = raised.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("internalServerException", ENDED_EARLY)
    assert text
    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-request-id"]
    assert_logged_as_ended_early(line_of(tls, request_id), text)


@pytest.mark.parametrize(
    ("prompt", "fault"),
    [
        pytest.param(PROMPT, FAULT, id="one-prompt"),
        # Prompt 0 streams whole, its finish reason included; prompt 1 is cut in its text.
        # Before, the first finish reason ended the answer: the SDK took prompt 1's half
        # text for whole, and the request was logged completed.
        pytest.param([PROMPT, PROMPT], "chunks=2;end_inside=3", id="batch-cut-in-prompt-2"),
    ],
)
def test_an_openai_completions_client_reads_the_gateways_error(
    tls: TlsStack, prompt: str | list[str], fault: str
) -> None:
    client = openai.OpenAI(
        base_url=f"{tls.url}/v1",
        api_key=KEYS["cut-chat"],
        max_retries=0,
        http_client=httpx.Client(verify=str(tls.ca), timeout=30.0),
    )
    text = ""
    with client.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        prompt=prompt,
        stream=True,
        extra_headers={"x-mock-fault": fault},
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(openai.APIError) as raised:
            for chunk in response.parse():
                text += "".join(choice.text for choice in chunk.choices)
    assert raised.value.message == ENDED_EARLY
    assert text
    assert_logged_as_ended_early(line_of(tls, request_id), text)

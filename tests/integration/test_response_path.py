"""The lean response path: pass-through answers skip Envoy's response-headers message.

Real Envoy, gateway, Valkey and mock provider, with one quota rule so the
``x-ratelimit-*`` headers (set by Envoy's route from the gateway's metadata) can
be seen on both paths. ``/openai/gpt-4o-mini`` names an OpenAI-compatible model
in the path; on ``/v1/chat/completions`` the body names it, and Envoy reads it
(with ``stream``) before the gateway's first message: both are lean, a
non-streamed answer then coming whole in one buffered message. A model served by
Anthropic (translated: its errors change status) keeps the full path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, envoy_stat, running_stack

QUOTA = """
quotas:
  rules:
    - {name: key-rpm, subject: api_key, requests_per_minute: 100000}
"""
LEAN_PATH = "/openai/gpt-4o-mini"
CHAT_PATH = "/v1/chat/completions"
TRANSLATED_MODEL = "claude-3-5-haiku-latest"


@pytest.fixture(scope="module")
def lean_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("lean")
    config = workdir / "gateway.yaml"
    config.write_text(DEFAULT_CONFIG.read_text() + QUOTA)
    with running_stack(workdir, config) as running:
        yield running


def post(
    stack: LocalStack,
    path: str,
    *,
    stream: bool = False,
    fault: str = "",
    model: str = "gpt-4o-mini",
    raw: bytes | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "one two three"}],
        "stream": stream,
    }
    headers = {"authorization": "Bearer team1-key", "content-type": "application/json"}
    if fault:
        headers["x-mock-fault"] = fault
    content = raw if raw is not None else orjson.dumps(body)
    return httpx.post(stack.base_url + path, content=content, headers=headers, timeout=30.0)


def phases(
    stack: LocalStack, path: str, model: str = "gpt-4o-mini"
) -> tuple[int, int, httpx.Response]:
    """Envoy's count of ext_proc messages sent and answered for one request."""
    sent = envoy_stat(stack, "aigw.ext_proc.stream_msgs_sent")
    received = envoy_stat(stack, "aigw.ext_proc.stream_msgs_received")
    answer = post(stack, path, model=model)
    sent = envoy_stat(stack, "aigw.ext_proc.stream_msgs_sent") - sent
    received = envoy_stat(stack, "aigw.ext_proc.stream_msgs_received") - received
    return sent, received, answer


def log_line(stack: LocalStack, answer: httpx.Response) -> dict[str, Any]:
    lines = GatewayLog(stack.gateway_log).for_request(answer.headers["x-request-id"])
    assert len(lines) == 1
    return lines[0]


def test_a_pass_through_answer_skips_the_response_headers_message_and_keeps_its_headers(
    lean_stack: LocalStack,
) -> None:
    sent, received, answer = phases(lean_stack, LEAN_PATH)

    assert answer.status_code == 200
    completion = answer.json()
    assert completion["object"] == "chat.completion"
    # Request headers, request body, and the whole answer in one buffered message
    # (Envoy sent the headers on without waiting, so no content-length); every
    # message Envoy sent was answered, and the answer still carries the headers.
    assert (sent, received) == (3, 3)
    assert "content-length" not in answer.headers
    assert answer.headers["x-ratelimit-limit-requests"] == "100000"
    assert int(answer.headers["x-ratelimit-remaining-requests"]) < 100000
    line = log_line(lean_stack, answer)
    assert line["http_status_code"] == 200
    assert line["outcome"] == "completed"
    assert line["prompt_tokens"] == completion["usage"]["prompt_tokens"]
    assert line["completion_tokens"] == completion["usage"]["completion_tokens"]


def test_a_model_named_in_the_body_is_lean_when_envoy_read_it_first(
    lean_stack: LocalStack,
) -> None:
    sent, received, answer = phases(lean_stack, CHAT_PATH)

    assert answer.status_code == 200
    assert (sent, received) == (3, 3)
    assert answer.headers["x-ratelimit-limit-requests"] == "100000"
    line = log_line(lean_stack, answer)
    assert (line["outcome"], line["provider"]) == ("completed", "mock")
    assert line["completion_tokens"] == answer.json()["usage"]["completion_tokens"]


def test_a_translated_model_keeps_the_full_path_and_the_same_headers(
    lean_stack: LocalStack,
) -> None:
    sent, received, answer = phases(lean_stack, CHAT_PATH, model=TRANSLATED_MODEL)

    assert answer.status_code == 200
    assert answer.json()["object"] == "chat.completion"
    # headers and body each way: the translated answer needed its headers answered
    assert (sent, received) == (4, 4)
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-ratelimit-limit-requests"] == "100000"


@pytest.mark.parametrize("last", [False, True])
def test_a_repeated_stream_key_is_answered_as_the_gateway_reads_it_or_refused(
    lean_stack: LocalStack, last: bool
) -> None:
    # Envoy chose how to read the answer from its own reading of the body; the
    # gateway's (orjson keeps the last key) decides the request. They must agree,
    # or the request is refused: never an answer read the wrong way.
    first = b"false" if last else b"true"
    raw = (
        b'{"model":"gpt-4o-mini","stream":' + first + b","
        b'"messages":[{"role":"user","content":"one two three"}],'
        b'"stream":' + (b"true" if last else b"false") + b"}"
    )
    answer = post(lean_stack, CHAT_PATH, raw=raw)

    line = log_line(lean_stack, answer)
    if answer.status_code == 400:
        assert answer.json()["error"]["code"] == "ambiguous_body"
        assert line["outcome"] == "rejected"
        return
    assert answer.status_code == 200
    assert line["stream"] is last
    assert line["outcome"] == "completed"
    if last:
        assert answer.text.rstrip().endswith("data: [DONE]")
    else:
        assert answer.json()["object"] == "chat.completion"
    assert line["completion_tokens"] > 0


def test_a_lean_stream_is_counted_and_its_usage_chunk_hidden(lean_stack: LocalStack) -> None:
    answer = post(lean_stack, LEAN_PATH, stream=True, fault="chunks=5")

    assert answer.status_code == 200
    events = [
        line[len("data: ") :]
        for line in answer.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    chunks = [orjson.loads(event) for event in events]
    assert len([c for c in chunks if c["choices"]]) >= 5
    # The client did not ask for usage: the chunk the gateway asked for is not shown.
    assert all(chunk.get("usage") is None for chunk in chunks)
    assert answer.text.rstrip().endswith("data: [DONE]")
    line = log_line(lean_stack, answer)
    assert line["stream"] is True
    assert line["completion_tokens"] == 5


def test_a_lean_provider_error_keeps_its_status_and_costs_nothing(
    lean_stack: LocalStack,
) -> None:
    answer = post(lean_stack, LEAN_PATH, fault="status=429")

    assert answer.status_code == 429
    assert answer.json()["error"]["message"]
    line = log_line(lean_stack, answer)
    assert line["http_status_code"] == 429
    assert line["total_tokens"] == 0

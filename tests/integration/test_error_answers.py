"""Providers' errors in shapes the clients did not ask for, through the real Envoy.

The mock answers, on request (``x-mock-fault``), a ``200`` whose body is an error
(``error_body``: OpenAI's, a bare ``{"error": "..."}``, Anthropic's, Google's list) and
an error status in Google's one-element list (``google_errors``, as Gemini's
OpenAI-compatible endpoint answers) or in Anthropic's shape (``anthropic_errors``). Each
case runs on the lean response path (a pass-through answer whose headers leave before
the gateway reads its body) and on the full one (a route whose answers a guard reads),
with an API key of its own, and reads what the client got (the official SDK and the
bytes on the wire: a rewritten body must arrive whole, of the length its headers
announce) and what an operator reads: the log line, ``tokens_consumed_total``,
``aigw_upstream_errors_total`` and the quota.
"""

from __future__ import annotations

import itertools
import socket
from typing import Any
from urllib.parse import urlsplit

import anthropic
import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.management.client import QuotaClient
from extproc.mock_llm.error_bodies import ERROR_BODY_MESSAGE
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    envoy_stat,
    metric,
    scrape,
    wait_for,
)
from tests.integration.mock_vertex import stack_serving

MESSAGES: list[Any] = [{"role": "user", "content": "one two three"}]
# A route whose answers a guard reads: the full response path, whatever the model.
FULL = "/guarded/v1"
LEAN = "/v1"
PATHS = {"lean": LEAN, "full": FULL}
SHAPES = ("openai", "bare", "anthropic", "google")
# Every key the module's cases use: one per case, so each case's ledgers are its own.
KEYS = [f"ea-{n}" for n in range(40)]
_unused = itertools.count()


def answers_config() -> dict[str, Any]:
    raw = default_config()
    raw["auth"]["api_keys"] += [{"id": key, "key": f"{key}-secret"} for key in KEYS]
    raw["guardrails"] = {
        "policies": [
            {"name": "answers", "response": [{"name": "no-falcon", "literals": ["falcon"]}]}
        ]
    }
    raw["routes"][:0] = [
        {"name": "guarded-chat", "path": f"{FULL}/chat/completions", "guardrails": "answers"},
        {
            "name": "guarded-messages",
            "path": f"{FULL}/messages",
            "api": "anthropic_messages",
            "guardrails": "answers",
        },
    ]
    raw["quotas"] = {"rules": [{"name": "day", "subject": "api_key", "tokens_per_day": 10**9}]}
    return raw


stack = stack_serving(answers_config, "error-answers")


@pytest.fixture
def key() -> str:
    """An API key no other case used."""
    return KEYS[next(_unused)]


def client(stack: LocalStack, key: str, base_path: str) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{base_path}", api_key=f"{key}-secret", max_retries=0)


def line_of(stack: LocalStack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    return line


def tokens_used(stack: LocalStack, key: str) -> int:
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", "dev-admin-token") as quotas:
        state = quotas.get("api_key", key)
    return sum(limit.used for limit in state.limits if limit.kind == "tokens")


def error_bodies(stack: LocalStack) -> float:
    samples = scrape(stack.metrics_url)
    return metric(samples, "aigw_upstream_errors_total", status_code="error_body")


def assert_nothing_charged(stack: LocalStack, key: str, line: dict[str, Any]) -> None:
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (0, 0, 0)
    assert (line["usage_reported"], line["usage_estimated"], line["cost_usd"]) == (
        False,
        False,
        0.0,
    )
    samples = scrape(stack.metrics_url)
    assert metric(samples, "tokens_consumed_total", api_key_id=key) == 0
    # The reservation made for the request was given back, not settled at an estimate.
    assert wait_for(lambda: tokens_used(stack, key) == 0, 10), tokens_used(stack, key)


def raw_post(stack: LocalStack, path: str, key: str, body: dict[str, Any], fault: str) -> bytes:
    """POST over a plain HTTP/1.1 connection the server closes, every byte it sent: what
    a client's parser is given, before any parser forgives a wrong length."""
    address = urlsplit(stack.base_url)
    content = orjson.dumps(body)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {address.hostname}\r\n"
        f"Authorization: Bearer {key}-secret\r\nContent-Type: application/json\r\n"
        f"X-Mock-Fault: {fault}\r\nContent-Length: {len(content)}\r\nConnection: close\r\n\r\n"
    ).encode() + content
    received = bytearray()
    with socket.create_connection((address.hostname, address.port), timeout=30) as conn:
        conn.sendall(request)
        while chunk := conn.recv(65536):
            received += chunk
    return bytes(received)


def framed_body(received: bytes) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of one HTTP/1.1 answer, checking that its framing
    holds: a ``content-length`` equal to the bytes that follow, or chunks that add up and
    end with the last chunk."""
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    if "content-length" in headers:
        assert "transfer-encoding" not in headers, headers
        assert int(headers["content-length"]) == len(rest), (headers, rest)
        return status, headers, rest
    assert headers.get("transfer-encoding") == "chunked", headers
    body = bytearray()
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert rest == b"\r\n", rest  # the last chunk, no trailers
            return status, headers, bytes(body)
        body += rest[:size]
        assert rest[size : size + 2] == b"\r\n", rest
        rest = rest[size + 2 :]


# A 200 whose body is the provider's error.


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("path", PATHS)
def test_a_200_error_body_reaches_the_client_as_sent_and_costs_nothing(
    stack: LocalStack, key: str, path: str, shape: str
) -> None:
    counted = error_bodies(stack)
    raw = client(stack, key, PATHS[path]).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        extra_headers={"x-mock-fault": f"error_body={shape}"},
    )

    # The client reads the provider's status and bytes as they came.
    assert raw.status_code == 200
    sent = orjson.loads(raw.http_response.content)
    if shape == "google":
        assert sent[0]["error"]["message"] == ERROR_BODY_MESSAGE
    elif shape == "bare":
        assert sent["error"] == ERROR_BODY_MESSAGE
    else:
        assert sent["error"]["message"] == ERROR_BODY_MESSAGE
    line = line_of(stack, raw.headers["x-request-id"])
    assert (line["http_status_code"], line["outcome"]) == (200, "upstream_error")
    # The provider's words (the gateway stars out anything like its provider key's ends:
    # "mock" begins the stack's).
    assert line["error_message"].startswith("The model is overloaded")
    expected = {
        "openai": ("server_error", "overloaded"),
        "bare": ("upstream_error", None),
        "anthropic": ("overloaded_error", None),
        # Google's UNAVAILABLE is its 503: an overload (google_statuses).
        "google": ("overloaded_error", "unavailable"),
    }[shape]
    assert (line["error_type"], line.get("error_code")) == expected
    assert_nothing_charged(stack, key, line)
    assert wait_for(lambda: error_bodies(stack) == counted + 1, 10)


@pytest.mark.parametrize("path", PATHS)
def test_a_200_error_body_to_a_stream_request_costs_nothing(
    stack: LocalStack, key: str, path: str
) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    received = raw_post(stack, f"{PATHS[path]}/chat/completions", key, body, "error_body=openai")

    status, headers, answer = framed_body(received)
    assert status == 200
    assert orjson.loads(answer)["error"]["message"] == ERROR_BODY_MESSAGE
    line = line_of(stack, headers["x-request-id"])
    assert (line["outcome"], line["stream"]) == ("upstream_error", True)
    assert_nothing_charged(stack, key, line)


@pytest.mark.parametrize("path", PATHS)
def test_an_anthropic_200_error_body_on_messages_costs_nothing(
    stack: LocalStack, key: str, path: str
) -> None:
    # The anthropic client adds /v1/messages to its base URL.
    base_url = stack.base_url + PATHS[path].removesuffix("/v1")
    claude = anthropic.Anthropic(base_url=base_url, api_key=f"{key}-secret", max_retries=0)
    raw = claude.messages.with_raw_response.create(
        model="claude-3-5-haiku-latest",
        max_tokens=50,
        messages=MESSAGES,
        extra_headers={"x-mock-fault": "error_body=anthropic"},
    )

    assert raw.status_code == 200
    sent = orjson.loads(raw.http_response.content)
    assert (sent["type"], sent["error"]["message"]) == ("error", ERROR_BODY_MESSAGE)
    line = line_of(stack, raw.headers["x-request-id"])
    assert (line["outcome"], line["error_type"]) == ("upstream_error", "overloaded_error")
    assert_nothing_charged(stack, key, line)


# A 200 whose body is the provider's error, where the gateway translates the answer.


@pytest.mark.parametrize(
    ("shape", "status", "error"),
    [
        # Anthropic's overload is its 529, an OpenAI client's 503 (anthropic_errors).
        ("anthropic", 503, ("overloaded_error", None)),
        ("openai", 502, ("server_error", "overloaded")),
        ("bare", 502, ("upstream_error", None)),
        # Google's UNAVAILABLE (its 503) is an overload too.
        ("google", 503, ("overloaded_error", "unavailable")),
    ],
)
def test_a_200_error_body_from_claude_reaches_an_openai_client_as_its_error(
    stack: LocalStack, key: str, shape: str, status: int, error: tuple[Any, ...]
) -> None:
    """An OpenAI client on Claude (``/anthropic``): the answer cannot be translated, so
    the client gets an error, with the provider's words (it read the gateway's "the
    provider's answer could not be read", and the log line named no error)."""
    counted = error_bodies(stack)
    with pytest.raises(openai.APIStatusError) as raised:
        client(stack, key, "/anthropic").chat.completions.create(
            model="claude-3-5-haiku-latest",
            messages=MESSAGES,
            extra_headers={"x-mock-fault": f"error_body={shape}"},
        )

    found = raised.value
    assert found.status_code == status
    assert isinstance(found.body, dict)
    assert found.body["message"].startswith("The model is overloaded")
    if status == 503:
        assert isinstance(found, openai.InternalServerError)
        assert found.code == "upstream_overloaded"
    line = line_of(stack, found.response.headers["x-request-id"])
    assert (line["http_status_code"], line["upstream_status_code"]) == (status, 200)
    assert line["outcome"] == "upstream_error"
    assert (line["error_type"], line["error_code"]) == error
    assert line["error_message"].startswith("The model is overloaded")
    assert_nothing_charged(stack, key, line)
    assert wait_for(lambda: error_bodies(stack) == counted + 1, 10)


# An error status in Google's list, from an OpenAI-compatible provider.


@pytest.mark.parametrize("path", PATHS)
def test_googles_error_list_reaches_the_openai_sdk_readable(
    stack: LocalStack, key: str, path: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client(stack, key, PATHS[path]).chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers={"x-mock-fault": "status=400;google_errors=1"},
        )

    error = raised.value
    assert error.status_code == 400
    assert isinstance(error.body, dict)
    assert error.body["message"] == "Injected error 400 (x-mock-fault)."
    assert (error.code, error.type) == ("invalid_argument", "invalid_request_error")
    line = line_of(stack, error.response.headers["x-request-id"])
    assert (line["http_status_code"], line["outcome"], line["total_tokens"]) == (
        400,
        "upstream_error",
        0,
    )


# An error status in Anthropic's shape, from an OpenAI-compatible provider.


@pytest.mark.parametrize("path", PATHS)
def test_anthropics_overload_from_an_openai_compatible_provider_reaches_the_openai_sdk_readable(
    stack: LocalStack, key: str, path: str
) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        client(stack, key, PATHS[path]).chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers={"x-mock-fault": "status=529;anthropic_errors=1"},
        )

    error = raised.value
    assert error.status_code == 529  # the provider's, kept: on the lean path it has left
    assert error.body == {
        "message": "Injected error 529 (x-mock-fault).",
        "type": "server_error",
        "param": None,
        "code": "overloaded_error",
    }
    line = line_of(stack, error.response.headers["x-request-id"])
    assert (line["http_status_code"], line["upstream_status_code"], line["outcome"]) == (
        529,
        529,
        "upstream_error",
    )
    assert line["total_tokens"] == 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream asked"])
@pytest.mark.parametrize("path", PATHS)
def test_googles_rewritten_error_list_arrives_whole_on_the_wire(
    stack: LocalStack, key: str, path: str, stream: bool
) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream}
    fault = "status=400;google_errors=1"
    messages = envoy_stat(stack, "aigw.ext_proc.stream_msgs_sent")
    received = raw_post(stack, f"{PATHS[path]}/chat/completions", key, body, fault)
    messages = envoy_stat(stack, "aigw.ext_proc.stream_msgs_sent") - messages

    # The body is longer than the provider's, whose length Envoy had from it: on the
    # lean path its headers left before the gateway changed the body (Envoy dropped
    # the length and sent it chunked), on the full path the gateway removed it.
    status, _, answer = framed_body(received)
    assert status == 400
    if not stream:
        # The path is the one meant: the lean one skips the response headers' message.
        assert messages == {"lean": 3, "full": 4}[path]
    assert orjson.loads(answer) == {
        "error": {
            "message": "Injected error 400 (x-mock-fault).",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_argument",
        }
    }


def test_httpx_reads_the_rewritten_error_whole(stack: LocalStack, key: str) -> None:
    # The same on the lean path through a client that trusts the framing it is given.
    answer = httpx.post(
        f"{stack.base_url}{LEAN}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={
            "authorization": f"Bearer {key}-secret",
            "x-mock-fault": "status=400;google_errors=1",
        },
        timeout=30.0,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_argument"

"""Bad input and upstream trouble: every refusal is an OpenAI-shaped error with the right status."""

from __future__ import annotations

import socket

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, mock_requests

CHAT = "/v1/chat/completions"
HEADERS = {"authorization": "Bearer team1-key", "content-type": "application/json"}


def assert_openai_error(response: httpx.Response, status: int, error_type: str) -> dict:  # type: ignore[type-arg]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == error_type
    assert isinstance(error["message"], str) and error["message"]
    return error  # type: ignore[no-any-return]


def test_malformed_json_is_a_400(http: httpx.Client, gateway_log: GatewayLog) -> None:
    response = http.post(CHAT, content=b'{"model": "gpt-4o-mini", "messages": [', headers=HEADERS)
    error = assert_openai_error(response, 400, "invalid_request_error")
    assert "not valid JSON" in error["message"]
    [line] = gateway_log.for_request(response.headers["x-request-id"])
    assert line["http_status_code"] == 400
    assert line["outcome"] == "rejected"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-4o-mini"}, "messages"),
        ({"model": "gpt-4o-mini", "messages": []}, "messages"),
        ({"model": "gpt-4o-mini", "messages": "hello"}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "gpt-4o-mini", "messages": [{"content": "no role"}]}, "messages[0]"),
        (
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "x"}],
                "stream": "yes",
            },
            "stream",
        ),
    ],
)
def test_invalid_chat_requests_are_400_naming_the_field(
    http: httpx.Client,
    body: dict,
    param: str,  # type: ignore[type-arg]
) -> None:
    response = http.post(CHAT, content=orjson.dumps(body), headers=HEADERS)
    error = assert_openai_error(response, 400, "invalid_request_error")
    assert error["param"] == param


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", ["100", 100.0, 0, True])
def test_a_chat_bound_of_the_wrong_type_is_a_400_before_any_provider(
    stack: LocalStack,
    client_openai: OpenAI,
    gateway_log: GatewayLog,
    field: str,
    value: object,
) -> None:
    # No quota rule reads it on this route: it used to go on to the provider, and a cut
    # answer's charge then failed on it (0 tokens billed).
    with pytest.raises(openai.BadRequestError) as caught:
        client_openai.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={field: value},
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert (body["type"], body["param"]) == ("invalid_request_error", field)
    request_id = caught.value.response.headers["x-request-id"]
    sent_on = [r for r in mock_requests(stack) if r["headers"].get("x-request-id") == request_id]
    assert sent_on == []
    [line] = gateway_log.for_request(request_id)
    assert (line["http_status_code"], line["outcome"]) == (400, "rejected")


def test_body_that_is_not_an_object_is_a_400(http: httpx.Client) -> None:
    response = http.post(CHAT, content=b"[1, 2, 3]", headers=HEADERS)
    assert_openai_error(response, 400, "invalid_request_error")


def test_body_over_the_limit_is_a_413(http: httpx.Client) -> None:
    big = "x" * (1_048_576 + 10)
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]})
    response = http.post(CHAT, content=body, headers=HEADERS)
    error = assert_openai_error(response, 413, "invalid_request_error")
    assert error["code"] == "request_too_large"


def test_chunked_body_over_the_limit_is_a_413(http: httpx.Client) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}]}'

    response = http.post(CHAT, content=chunks(), headers=HEADERS)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_a_404(client_openai: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client_openai.chat.completions.create(
            model="gpt-9-imaginary", messages=[{"role": "user", "content": "hi"}]
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"
    assert "gpt-9-imaginary" in body["message"]


def test_unknown_route_is_a_404(http: httpx.Client) -> None:
    response = http.post("/v2/unknown", content=b"{}", headers=HEADERS)
    error = assert_openai_error(response, 404, "not_found_error")
    assert error["code"] == "route_not_found"


def test_wrong_method_on_chat_is_a_405(http: httpx.Client) -> None:
    response = http.get(CHAT, headers=HEADERS)
    assert_openai_error(response, 405, "invalid_request_error")


def test_upstream_5xx_reaches_the_client_as_an_openai_error(
    client_openai: OpenAI, gateway_log: GatewayLog
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client_openai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-fault": "status=500"},
        )
    assert caught.value.status_code == 500
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "server_error"
    [line] = gateway_log.for_request(caught.value.response.headers["x-request-id"])
    assert line["http_status_code"] == 500
    assert line["outcome"] == "upstream_error"


def test_upstream_429_is_passed_through_with_retry_after(client_openai: OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client_openai.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-fault": "status=429"},
        )
    assert caught.value.response.headers.get("retry-after") == "1"


def test_upstream_garbage_does_not_break_the_gateway(
    http: httpx.Client, gateway_log: GatewayLog
) -> None:
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    response = http.post(CHAT, content=body, headers={**HEADERS, "x-mock-fault": "garbage=1"})
    assert response.status_code == 200
    [line] = gateway_log.for_request(response.headers["x-request-id"])
    assert line["usage_reported"] is False


@pytest.mark.parametrize("model", ["claude-3-5-haiku-latest", "titan"])
def test_an_answer_that_cannot_be_translated_is_a_502(
    http: httpx.Client, gateway_log: GatewayLog, model: str
) -> None:
    # Anthropic's or Bedrock's 200 that is not their API's answer: the OpenAI client
    # gets an error it recognises, not a 200 holding an error.
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]})
    response = http.post(CHAT, content=body, headers={**HEADERS, "x-mock-fault": "garbage=1"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "invalid_upstream_response" or (
        response.json()["error"]["type"] == "upstream_error"
    )
    [line] = gateway_log.for_request(response.headers["x-request-id"])
    assert (line["http_status_code"], line["outcome"]) == (502, "upstream_error")


@pytest.fixture
def client_openai(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)


def test_a_client_cannot_pick_the_provider_cluster_itself(
    stack: LocalStack, http: httpx.Client
) -> None:
    before = len(httpx.get(f"{stack.mock_url}/_mock/requests").json())
    # Not an AI route: the gateway skips it, so only Envoy stands between the
    # client's routing header and the provider.
    response = http.post(
        "/v1/chat/completions-not-a-route",
        content=b"{}",
        headers={**HEADERS, "x-aigw-cluster": "provider_mock"},
    )
    assert response.status_code == 404
    assert len(httpx.get(f"{stack.mock_url}/_mock/requests").json()) == before


def test_headers_too_large_get_a_431_in_openai_shape(stack: LocalStack) -> None:
    # Refused by Envoy's HTTP codec before any filter saw the request: the reply used to
    # wait on the ext_proc filter while Envoy closed the connection, so none arrived.
    huge = {"authorization": "Bearer team1-key", "x-big": "a" * 70_000}
    answer = httpx.post(f"{stack.base_url}/v1/chat/completions", headers=huge, content=b"{}")
    assert answer.status_code == 431
    assert answer.json()["error"]["type"]


def test_malformed_http_gets_a_400_in_openai_shape(stack: LocalStack) -> None:
    host, port = stack.base_url.removeprefix("http://").split(":")
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nbad header: 1\r\n"
        b"content-length: 2\r\n\r\n{}"
    )
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b'"error"' in body

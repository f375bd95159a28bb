"""The workshop's routing flows, checked end to end with the official openai client.

A client names the model in the body, the path (`/openai/gpt-4o`), a `model`
header or a `?model=` query; the gateway must bill, log and count the model it
actually sent upstream, refuse a request that names two models, and answer odd
model names and odd paths with a clear OpenAI error: never a 500, never a
provider reached around authentication.
"""

from __future__ import annotations

import http.client
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    metric,
    mock_requests,
    scrape,
    usage_rows,
    wait_for,
)

KEY = "team1-key"
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "route me"}]


def openai_client(stack: LocalStack, base_path: str) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{base_path}", api_key=KEY, max_retries=0)


def raw_post(
    stack: LocalStack, path: str, body: dict[str, Any], **headers: str
) -> tuple[int, Any, str]:
    """POST with the path exactly as written (httpx would resolve `..` and `//` itself):
    the status, the JSON answer and the request id."""
    parts = urlsplit(stack.base_url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request(
            "POST",
            path,
            body=orjson.dumps(body),
            headers={"content-type": "application/json", **headers},
        )
        answer = connection.getresponse()
        return answer.status, orjson.loads(answer.read()), answer.getheader("x-request-id", "")
    finally:
        connection.close()


def model_rollup(stack: LocalStack, model: str) -> dict[str, Any]:
    return usage_rows(stack, "model").get(model) or {"requests": 0, "total_tokens": 0}


def settled_rollup(stack: LocalStack, model: str) -> dict[str, Any]:
    """The model's rollup once earlier tests' requests have landed: two reads that agree,
    further apart than the gateway's 0.5 s flush interval."""
    last = model_rollup(stack, model)
    for _ in range(20):
        time.sleep(0.6)
        now = model_rollup(stack, model)
        if now == last:
            return now
        last = now
    raise AssertionError(f"the rollup of {model} never settled")


def test_a_model_forced_by_the_path_is_what_is_logged_counted_and_billed(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before_rollup = settled_rollup(stack, "gpt-4.1-nano")
    before = scrape(stack.metrics_url)
    client = openai_client(stack, "/openai/gpt-4.1-nano")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    answer = raw.parse()
    assert answer.model == "gpt-4.1-nano"
    assert mock_requests(stack)[-1]["json"]["model"] == "gpt-4.1-nano"
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["route"], line["model"], line["upstream_model"]) == (
        "openai",
        "gpt-4.1-nano",
        "gpt-4.1-nano",
    )
    assert answer.usage is not None
    after = scrape(stack.metrics_url)
    counted = metric(after, "tokens_consumed_total", model="gpt-4.1-nano", api_key_id="team1")
    counted -= metric(before, "tokens_consumed_total", model="gpt-4.1-nano", api_key_id="team1")
    assert counted == answer.usage.total_tokens
    # Nothing was counted under the name the body gave.
    assert metric(after, "tokens_consumed_total", model="gpt-4o-mini") == metric(
        before, "tokens_consumed_total", model="gpt-4o-mini"
    )
    billed = wait_for(
        lambda: (
            (row := model_rollup(stack, "gpt-4.1-nano"))["requests"] > before_rollup["requests"]
            and row
        ),
        30,
    )
    assert billed, "the usage rollup never named the forced model"
    assert billed["total_tokens"] - before_rollup["total_tokens"] == answer.usage.total_tokens


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"extra_headers": {"model": "gpt-4o"}}, "gpt-4o"),
        ({"extra_query": {"model": "gpt-4.1-nano"}}, "gpt-4.1-nano"),
    ],
    ids=["header", "query"],
)
def test_the_official_client_can_name_the_model_in_a_header_or_the_query(
    stack: LocalStack, extra: dict[str, Any], expected: str
) -> None:
    client = openai_client(stack, "/openai")
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        **extra,
    )
    assert answer.model == expected
    assert mock_requests(stack)[-1]["json"]["model"] == expected


def test_the_path_beats_the_header_which_beats_the_query(stack: LocalStack) -> None:
    status, answer, _ = raw_post(
        stack,
        "/openai/gpt-4.1-nano?model=gpt-4o-mini",
        {"model": "gpt-4o-mini", "messages": MESSAGES},
        authorization=f"Bearer {KEY}",
        model="gpt-4o-mini",
    )
    assert (status, answer["model"]) == (200, "gpt-4.1-nano")
    status, answer, _ = raw_post(
        stack,
        "/openai?model=gpt-4o-mini",
        {"model": "gpt-4o-mini", "messages": MESSAGES},
        authorization=f"Bearer {KEY}",
        model="gpt-4o",
    )
    assert (status, answer["model"]) == (200, "gpt-4o")


def test_a_url_encoded_query_model_is_decoded(stack: LocalStack) -> None:
    status, answer, _ = raw_post(
        stack,
        "/openai?model=gpt%2D4o",
        {"messages": MESSAGES},
        authorization=f"Bearer {KEY}",
    )
    assert (status, answer["model"]) == (200, "gpt-4o")


def test_a_query_naming_two_models_is_refused_not_guessed(stack: LocalStack) -> None:
    sent = len(mock_requests(stack))
    status, answer, _ = raw_post(
        stack,
        "/openai?model=gpt-4o&model=gpt-4.1-nano",
        {"model": "gpt-4o-mini", "messages": MESSAGES},
        authorization=f"Bearer {KEY}",
    )
    assert status == 400, answer
    assert answer["error"]["code"] == "ambiguous_model"
    assert answer["error"]["param"] == "model"
    assert len(mock_requests(stack)) == sent


def test_the_same_model_twice_in_the_query_is_just_that_model(stack: LocalStack) -> None:
    status, answer, _ = raw_post(
        stack,
        "/openai?model=gpt-4o&model=gpt-4o",
        {"messages": MESSAGES},
        authorization=f"Bearer {KEY}",
    )
    assert (status, answer["model"]) == (200, "gpt-4o")


def test_a_model_header_sent_twice_reads_as_the_query_does(stack: LocalStack) -> None:
    # A proxy in front sets the `model` header its client set too: Envoy hands both on.
    with httpx.Client(base_url=stack.base_url, timeout=30.0) as http:
        twice = [("authorization", f"Bearer {KEY}"), ("model", "gpt-4o"), ("model", "gpt-4o")]
        answer = http.post("/openai", json={"messages": MESSAGES}, headers=twice)
        assert (answer.status_code, answer.json()["model"]) == (200, "gpt-4o")
        assert mock_requests(stack)[-1]["json"]["model"] == "gpt-4o"
        sent = len(mock_requests(stack))
        two = [*twice[:2], ("model", "gpt-4.1-nano")]
        answer = http.post("/openai", json={"messages": MESSAGES}, headers=two)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "ambiguous_model"
    assert len(mock_requests(stack)) == sent


@pytest.mark.parametrize(
    ("path", "model", "status"),
    [
        ("/openai", "GPT-4o", 404),
        ("/openai", " gpt-4o ", 404),
        ("/openai/GPT-4O", None, 404),
        ("/v1/chat/completions", "", 400),
        ("/v1/chat/completions", 42, 400),
        ("/anthropic", 42, 400),
        ("/bedrock", 4.5, 400),
    ],
)
def test_odd_model_names_get_a_clear_openai_error(
    stack: LocalStack, path: str, model: object, status: int
) -> None:
    body: dict[str, Any] = {"messages": MESSAGES}
    if model is not None:
        body["model"] = model
    sent = len(mock_requests(stack))
    found, answer, _ = raw_post(stack, path, body, authorization=f"Bearer {KEY}")
    assert found == status, answer
    assert answer["error"]["param"] == "model"
    assert len(mock_requests(stack)) == sent


def test_an_unknown_model_on_the_messages_api_is_an_anthropic_shaped_404(
    stack: LocalStack,
) -> None:
    status, answer, _ = raw_post(
        stack,
        "/v1/messages",
        {"model": "no-such-model", "max_tokens": 8, "messages": MESSAGES},
        **{"x-api-key": KEY},
    )
    assert status == 404
    assert answer["type"] == "error" and answer["error"]["type"] == "not_found_error"


# Paths a client might use to slip past the route table. Envoy normalises `..`, `//`,
# `\` and `%2e` before any filter (normalize_path, merge_slashes), so the gateway
# sees the path it routes; an encoded slash stays encoded and matches no route.
TRICKS = [
    ("/x/../openai/gpt-4o", "openai"),
    ("//openai//gpt-4o", "openai"),
    ("/openai/%2e%2e/bedrock/titan", "bedrock"),
    ("/openai\\gpt-4o", "openai"),
    ("/v1/chat/completions/", None),
    ("/v1/chat%2Fcompletions", None),
    ("/openai%2Fgpt-4o", None),
    ("/OPENAI/gpt-4o", None),
]


@pytest.mark.parametrize(("path", "route"), TRICKS)
def test_a_path_trick_never_reaches_a_provider_without_a_key(
    stack: LocalStack, path: str, route: str | None
) -> None:
    sent = len(mock_requests(stack))
    status, answer, _ = raw_post(stack, path, {"model": "gpt-4o", "messages": MESSAGES})
    assert status == (401 if route else 404), answer
    assert answer["error"]["code"] == ("invalid_api_key" if route else "route_not_found")
    assert len(mock_requests(stack)) == sent


@pytest.mark.parametrize(("path", "route"), TRICKS)
def test_a_path_trick_lands_on_the_route_the_normalised_path_names(
    stack: LocalStack, gateway_log: GatewayLog, path: str, route: str | None
) -> None:
    body = {"messages": MESSAGES}
    status, answer, request_id = raw_post(stack, path, body, authorization=f"Bearer {KEY}")
    if route is None:
        assert (status, answer["error"]["code"]) == (404, "route_not_found")
        return
    assert status == 200, answer
    [line] = gateway_log.for_request(request_id)
    assert line["route"] == route


def test_an_unknown_bedrock_alias_is_an_openai_shaped_404(http: httpx.Client) -> None:
    body = orjson.dumps({"messages": MESSAGES})
    response = http.post(
        "/bedrock/no-such-alias", content=body, headers={"authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("host", "route", "provider"),
    [
        ("openai.gateway.local", "openai-host", "mock"),
        ("Anthropic.Gateway.Local:10000", "anthropic-host", "mock-anthropic"),
        ("elsewhere.example", "openai-chat", "mock"),
    ],
)
def test_the_default_config_routes_one_path_by_host(
    stack: LocalStack, gateway_log: GatewayLog, host: str, route: str, provider: str
) -> None:
    """The workshop's virtual hosts on one listener: the Host picks the provider."""
    body = {"model": "claude-3-5-haiku-latest", "messages": MESSAGES}
    if provider == "mock":
        body["model"] = "gpt-4o-mini"
    status, answer, request_id = raw_post(
        stack, "/v1/chat/completions", body, host=host, authorization=f"Bearer {KEY}"
    )

    assert status == 200, answer
    assert answer["object"] == "chat.completion"  # OpenAI's shape, whoever answered
    [line] = gateway_log.for_request(request_id)
    assert (line["route"], line["provider"]) == (route, provider)


EMBEDDINGS_BODY = {"model": "text-embedding-3-small", "input": "route me"}
MESSAGES_BODY = {"model": "claude-3-5-haiku-latest", "max_tokens": 16, "messages": MESSAGES}


@pytest.mark.parametrize(
    ("path", "body", "meant"),
    [
        # The `/openai` prefix read it as a chat completion: a 400 about `messages`.
        ("/openai/v1/embeddings/", EMBEDDINGS_BODY, "/openai/v1/embeddings"),
        # Envoy merges the slashes; the stored-responses prefix took `compact` for an id.
        ("//v1/responses//compact//", {"model": "gpt-4o", "input": "hi"}, "/v1/responses/compact"),
        ("/v1/messages/", MESSAGES_BODY, "/v1/messages"),
    ],
)
def test_a_trailing_slash_is_a_404_in_the_shape_of_the_api_meant(
    stack: LocalStack, gateway_log: GatewayLog, path: str, body: dict[str, Any], meant: str
) -> None:
    sent = len(mock_requests(stack))
    status, answer, request_id = raw_post(stack, path, body, authorization=f"Bearer {KEY}")
    assert status == 404, answer
    if meant == "/v1/messages":
        assert answer["type"] == "error"
        error = answer["error"]
        assert error["type"] == "not_found_error"
    else:
        error = answer["error"]
        assert error["code"] == "route_not_found"
    assert f"did you mean {meant} " in error["message"]
    assert len(mock_requests(stack)) == sent
    [line] = gateway_log.for_request(request_id)
    assert (line["http_status_code"], line["total_tokens"]) == (404, 0)

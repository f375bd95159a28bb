"""The mock's faults that answer errors in a shape of the test's choosing: ``error_body``
(a 200 whose body is an error), ``google_errors`` (a status's error in Google's list,
as Gemini's OpenAI-compatible endpoint sends it) and ``anthropic_errors`` (a status's
error, or with ``error_after`` a stream's, in Anthropic's shape)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from extproc.mock_llm.error_bodies import ERROR_BODY_MESSAGE

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": "Bearer sk-test"}
ANTHROPIC = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
MESSAGE = {"model": "claude-3-5-haiku-latest", "max_tokens": 20, "messages": CHAT["messages"]}


async def chat(http: httpx.AsyncClient, fault: str, **extra: Any) -> httpx.Response:
    return await http.post(
        "/v1/chat/completions", json={**CHAT, **extra}, headers={**AUTH, "x-mock-fault": fault}
    )


async def streamed_chat(
    http: httpx.AsyncClient, fault: str, **extra: Any
) -> tuple[httpx.Response, list[bytes]]:
    """A streamed chat under ``fault``: the answer and its SSE events, in order."""
    answer = await chat(http, fault, stream=True, **extra)
    return answer, [event for event in answer.content.split(b"\n\n") if event]


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (
            "openai",
            {
                "error": {
                    "message": ERROR_BODY_MESSAGE,
                    "type": "server_error",
                    "param": None,
                    "code": "overloaded",
                }
            },
        ),
        ("bare", {"error": ERROR_BODY_MESSAGE}),
        (
            "anthropic",
            {"type": "error", "error": {"type": "overloaded_error", "message": ERROR_BODY_MESSAGE}},
        ),
        (
            "google",
            [{"error": {"code": 503, "message": ERROR_BODY_MESSAGE, "status": "UNAVAILABLE"}}],
        ),
    ],
)
async def test_error_body_answers_200_with_that_error(
    http: httpx.AsyncClient, shape: str, expected: Any
) -> None:
    answer = await chat(http, f"error_body={shape}")

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == expected


async def test_error_body_answers_json_to_a_stream_request_too(http: httpx.AsyncClient) -> None:
    answer = await chat(http, "error_body=openai", stream=True)

    assert answer.status_code == 200
    assert answer.json()["error"]["message"] == ERROR_BODY_MESSAGE


@pytest.mark.parametrize(
    "path", ["/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/responses/compact"]
)
async def test_error_body_answers_on_every_openai_path(http: httpx.AsyncClient, path: str) -> None:
    headers = {**AUTH, "x-mock-fault": "error_body=bare"}
    answer = await http.post(path, json={"model": "m", "input": "hi"}, headers=headers)

    assert (answer.status_code, answer.json()) == (200, {"error": ERROR_BODY_MESSAGE})


async def test_error_body_answers_on_anthropics_messages(http: httpx.AsyncClient) -> None:
    answer = await http.post(
        "/v1/messages", json=MESSAGE, headers={**ANTHROPIC, "x-mock-fault": "error_body=anthropic"}
    )

    assert answer.status_code == 200
    assert answer.json()["type"] == "error"
    assert answer.json()["error"]["message"] == ERROR_BODY_MESSAGE


async def test_google_errors_answers_the_status_in_googles_list(http: httpx.AsyncClient) -> None:
    answer = await chat(http, "status=400;google_errors=1")

    assert answer.status_code == 400
    assert answer.json() == [
        {
            "error": {
                "code": 400,
                "message": "Injected error 400 (x-mock-fault).",
                "status": "INVALID_ARGUMENT",
            }
        }
    ]


async def test_anthropic_errors_answers_the_status_in_anthropics_shape(
    http: httpx.AsyncClient,
) -> None:
    answer = await chat(http, "status=529;anthropic_errors=1")

    assert answer.status_code == 529
    assert answer.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Injected error 529 (x-mock-fault)."},
    }


async def test_anthropic_errors_with_error_after_fails_a_stream_in_anthropics_shape(
    http: httpx.AsyncClient,
) -> None:
    # A proxy in front of Claude failing an OpenAI stream as Anthropic's API fails its own.
    answer, events = await streamed_chat(http, "error_after=1;anthropic_errors=1")

    assert answer.status_code == 200
    assert events[-1] == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded (injected by x-mock-fault)"}}'
    )
    assert b"[DONE]" not in answer.content


async def test_error_quotes_user_fails_a_stream_refusing_the_requests_user(
    http: httpx.AsyncClient,
) -> None:
    # A provider quoting a value it was sent mid-stream: what the gateway must not pass
    # on when the value is the client's own key.
    answer, events = await streamed_chat(http, "error_after=1;error_quotes_user=1", user="u-42")

    assert answer.status_code == 200
    assert events[-1] == (
        b'data: {"error":{"message":"Invalid value for \'user\': \'u-42\' (injected by '
        b'x-mock-fault).","type":"invalid_request_error","param":"user","code":null}}'
    )
    assert b"[DONE]" not in answer.content


@pytest.mark.parametrize(
    ("fault", "named"),
    [
        ("error_body=xml", "error_body='xml' must be one of openai, bare, anthropic, google"),
        ("google_errors=yes", "google_errors='yes' must be 0, 1, true or false"),
        ("google_errors=1", "google_errors needs a status"),
        ("anthropic_errors=1", "anthropic_errors needs a status"),
        (
            "status=500;anthropic_errors=1;google_errors=1",
            "anthropic_errors and google_errors exclude each other",
        ),
        ("error_body=openai;status=500", "error_body answers 200: it excludes status"),
        ("error_quotes_user=1", "error_quotes_user needs error_after"),
        (
            "error_after=1;error_quotes_user=1;anthropic_errors=1",
            "error_quotes_user and anthropic_errors exclude each other",
        ),
    ],
)
async def test_a_bad_error_fault_is_a_400_naming_it(
    http: httpx.AsyncClient, fault: str, named: str
) -> None:
    answer = await chat(http, fault)

    assert answer.status_code == 400
    assert named in answer.json()["error"]["message"]

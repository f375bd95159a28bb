"""Gemini's native API on the mock's Vertex AI surface (generateContent, its stream and
countTokens), driven by Google's own google-genai SDK: it trades a service account key for
an access token at the mock's token endpoint, then calls Vertex's publisher model paths.
Raw httpx sends what the SDK will not and reads the wire the SDK hides."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from google import genai
from google.genai import errors, types

from tests.unit.test_mock_vertex import (
    LOCATION,
    PROJECT,
    REGION,
    Vertex,
    bearer,
    credentials,
    google_error,
    refresh,
    vertex_mock,
)

MODEL = "gemini-2.5-flash"
MODEL_PATH = f"{LOCATION}/publishers/google/models/{MODEL}"
GENERATE = f"{MODEL_PATH}:generateContent"
STREAM = f"{MODEL_PATH}:streamGenerateContent"
STREAM_SSE = f"{STREAM}?alt=sse"
COUNT = f"{MODEL_PATH}:countTokens"
PROMPT = "Say hello, mock!"
REPLY = "Mock reply to: Say hello, mock!"
# Say hello , mock ! -> 5 tokens, + 4 for the content, + 2 for the request.
PROMPT_TOKENS = 11
# Be brief . -> 3 tokens, + 4: the system instruction counts as one more content.
SYSTEM = "Be brief."
SYSTEM_PROMPT_TOKENS = PROMPT_TOKENS + 3 + 4
REPLY_TOKENS = 9  # Mock reply to : Say hello , mock !
CONTENTS: list[Any] = [{"role": "user", "parts": [{"text": PROMPT}]}]
BODY: dict[str, Any] = {"contents": CONTENTS}
# Each Gemini route, with a body it answers 200.
ROUTES = [
    pytest.param(GENERATE, id="generate"),
    pytest.param(STREAM_SSE, id="stream"),
    pytest.param(COUNT, id="count"),
]


@pytest.fixture(scope="module")
async def vertex(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Vertex]:
    async with vertex_mock(tmp_path_factory.mktemp("gcp") / "key.json") as mock:
        yield mock


@pytest.fixture(scope="module")
async def token(vertex: Vertex) -> str:
    return await refresh(credentials(vertex.account.path))


@pytest.fixture
async def http(vertex: Vertex) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=vertex.url) as client:
        yield client


@pytest.fixture
async def gemini(vertex: Vertex) -> AsyncIterator[genai.client.AsyncClient]:
    """The SDK on Vertex: it mints its own token from the key file (in a thread)."""
    client = genai.Client(
        vertexai=True,
        project=PROJECT,
        location=REGION,
        credentials=credentials(vertex.account.path),
        http_options=types.HttpOptions(
            base_url=vertex.url,
            api_version="v1",
            # No retries: a fault the mock injects must reach the test.
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )
    yield client.aio
    await client.aio.aclose()


def with_headers(**headers: str) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(http_options=types.HttpOptions(headers=headers))


def fault(spec: str) -> types.GenerateContentConfig:
    return with_headers(**{"x-mock-fault": spec})


def usage(response: types.GenerateContentResponse) -> types.GenerateContentResponseUsageMetadata:
    assert response.usage_metadata is not None
    return response.usage_metadata


def finish_reason(response: types.GenerateContentResponse) -> types.FinishReason | None:
    assert response.candidates
    return response.candidates[0].finish_reason


async def post(
    http: httpx.AsyncClient, path: str, body: Any, token: str, **headers: str
) -> httpx.Response:
    return await http.post(path, json=body, headers=bearer(token, **headers))


def sse_events(answer: httpx.Response) -> list[dict[str, Any]]:
    """The JSON of each event of a Gemini SSE answer, after checking Google's framing."""
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    assert answer.text.endswith("\r\n\r\n")
    frames = answer.text.split("\r\n\r\n")[:-1]
    assert all(frame.startswith("data: ") for frame in frames), frames
    return [orjson.loads(frame[len("data: ") :]) for frame in frames]


def text_of(event: dict[str, Any]) -> str:
    return "".join(part["text"] for part in event["candidates"][0]["content"]["parts"])


# --- generateContent ---


async def test_generate_content_answers_through_the_sdk(
    gemini: genai.client.AsyncClient,
) -> None:
    response = await gemini.models.generate_content(model=MODEL, contents=PROMPT)

    assert response.text == REPLY
    assert finish_reason(response) == types.FinishReason.STOP
    counts = usage(response)
    assert counts.prompt_token_count == PROMPT_TOKENS
    assert counts.candidates_token_count == REPLY_TOKENS
    assert counts.total_token_count == PROMPT_TOKENS + REPLY_TOKENS
    assert counts.thoughts_token_count is None
    assert counts.cached_content_token_count is None
    assert response.model_version == MODEL
    assert response.response_id
    assert response.create_time is not None


async def test_each_answer_has_its_own_response_id(gemini: genai.client.AsyncClient) -> None:
    first = await gemini.models.generate_content(model=MODEL, contents=PROMPT)
    second = await gemini.models.generate_content(model=MODEL, contents=PROMPT)
    assert first.response_id != second.response_id


async def test_the_system_instruction_is_part_of_the_prompt(
    gemini: genai.client.AsyncClient,
) -> None:
    response = await gemini.models.generate_content(
        model=MODEL,
        contents=PROMPT,
        config=types.GenerateContentConfig(system_instruction=SYSTEM),
    )
    assert response.text == REPLY
    assert usage(response).prompt_token_count == SYSTEM_PROMPT_TOKENS


async def test_the_reply_quotes_the_last_user_content(http: httpx.AsyncClient, token: str) -> None:
    contents = [
        {"role": "user", "parts": [{"text": "First question"}]},
        {"role": "model", "parts": [{"text": "An answer."}]},
        # Google takes a content without a role as the user's.
        {"parts": [{"text": "Second"}, {"inlineData": {"mimeType": "image/png", "data": "AA=="}}]},
    ]
    answer = await post(http, GENERATE, {"contents": contents}, token)

    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert text_of(document) == "Mock reply to: Second"
    # First question: 2 + 4; An answer .: 3 + 4; Second (the image counts nothing): 1 + 4; + 2.
    assert document["usageMetadata"]["promptTokenCount"] == 20


@pytest.mark.parametrize("role", [None, ""])
async def test_an_unset_role_is_the_users(
    http: httpx.AsyncClient, token: str, role: str | None
) -> None:
    body = {"contents": [{"role": role, "parts": [{"text": PROMPT}]}]}
    answer = await post(http, GENERATE, body, token)
    assert answer.status_code == 200, answer.text
    assert text_of(answer.json()) == REPLY


async def test_max_output_tokens_cuts_the_reply(gemini: genai.client.AsyncClient) -> None:
    response = await gemini.models.generate_content(
        model=MODEL, contents=PROMPT, config=types.GenerateContentConfig(max_output_tokens=3)
    )

    assert response.text == "Mock reply to"
    assert finish_reason(response) == types.FinishReason.MAX_TOKENS
    assert usage(response).candidates_token_count == 3
    assert usage(response).total_token_count == PROMPT_TOKENS + 3


@pytest.mark.parametrize(
    ("budget", "thoughts"),
    [pytest.param(100, 8, id="large"), pytest.param(5, 5, id="small")],
)
async def test_a_thinking_budget_reports_thoughts_billed_in_the_total(
    gemini: genai.client.AsyncClient, budget: int, thoughts: int
) -> None:
    response = await gemini.models.generate_content(
        model=MODEL,
        contents=PROMPT,
        config=types.GenerateContentConfig(
            thinking_config=types.ThinkingConfig(thinking_budget=budget)
        ),
    )

    counts = usage(response)
    assert response.text == REPLY
    assert counts.thoughts_token_count == thoughts
    assert counts.candidates_token_count == REPLY_TOKENS
    assert counts.total_token_count == PROMPT_TOKENS + REPLY_TOKENS + thoughts


async def test_no_thinking_budget_reports_no_thoughts(gemini: genai.client.AsyncClient) -> None:
    response = await gemini.models.generate_content(
        model=MODEL,
        contents=PROMPT,
        config=types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=0)),
    )
    assert usage(response).thoughts_token_count is None
    assert usage(response).total_token_count == PROMPT_TOKENS + REPLY_TOKENS


async def test_snake_case_fields_are_read_as_camel_case_ones(
    http: httpx.AsyncClient, token: str
) -> None:
    body = {
        "contents": CONTENTS,
        "system_instruction": {"parts": [{"text": SYSTEM}]},
        "generation_config": {"max_output_tokens": 3, "thinking_config": {"thinking_budget": 2}},
    }
    answer = await post(http, GENERATE, body, token)

    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert text_of(document) == "Mock reply to"
    assert document["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert document["usageMetadata"]["promptTokenCount"] == SYSTEM_PROMPT_TOKENS
    assert document["usageMetadata"]["thoughtsTokenCount"] == 2


async def test_the_json_answer_is_googles_shape(http: httpx.AsyncClient, token: str) -> None:
    answer = await post(http, GENERATE, BODY, token)

    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    document = answer.json()
    [candidate] = document["candidates"]
    assert candidate["content"] == {"role": "model", "parts": [{"text": REPLY}]}
    assert candidate["finishReason"] == "STOP"
    assert document["modelVersion"] == MODEL
    assert document["createTime"].endswith("Z")


@pytest.mark.parametrize(
    ("headers", "traffic_type"),
    [
        ({}, "ON_DEMAND"),
        ({"X-Vertex-AI-LLM-Shared-Request-Type": "priority"}, "ON_DEMAND_PRIORITY"),
        ({"X-Vertex-AI-LLM-Shared-Request-Type": "flex"}, "ON_DEMAND_FLEX"),
        ({"X-Vertex-AI-LLM-Request-Type": "dedicated"}, "PROVISIONED_THROUGHPUT"),
    ],
)
async def test_the_traffic_type_is_the_capacity_the_headers_ask_for(
    http: httpx.AsyncClient, token: str, headers: dict[str, str], traffic_type: str
) -> None:
    answer = await post(http, GENERATE, BODY, token, **headers)
    assert answer.json()["usageMetadata"]["trafficType"] == traffic_type


# --- Chosen replies and faults on generateContent ---


async def test_a_chosen_reply_is_the_answer(gemini: genai.client.AsyncClient) -> None:
    response = await gemini.models.generate_content(
        model=MODEL, contents=PROMPT, config=with_headers(**{"x-mock-reply": "Chosen words."})
    )
    assert response.text == "Chosen words."
    assert usage(response).candidates_token_count == 3


async def test_a_malformed_chosen_reply_is_an_invalid_argument(
    http: httpx.AsyncClient, token: str
) -> None:
    answer = await post(http, GENERATE, BODY, token, **{"x-mock-reply": "[not json"})
    assert "x-mock-reply" in google_error(answer, 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    ("cached", "reported"),
    [pytest.param(5, 5, id="some"), pytest.param(100, PROMPT_TOKENS, id="at-most-all")],
)
async def test_cached_tokens_are_reported_within_the_prompt(
    gemini: genai.client.AsyncClient, cached: int, reported: int
) -> None:
    response = await gemini.models.generate_content(
        model=MODEL, contents=PROMPT, config=fault(f"cached={cached}")
    )
    counts = usage(response)
    assert counts.cached_content_token_count == reported
    # Part of the prompt, not added to it.
    assert counts.prompt_token_count == PROMPT_TOKENS
    assert counts.total_token_count == PROMPT_TOKENS + REPLY_TOKENS


@pytest.mark.parametrize(
    ("status", "google_status"),
    [(429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE"), (500, "INTERNAL")],
)
async def test_a_fault_status_reaches_the_sdk_in_googles_shape(
    gemini: genai.client.AsyncClient, status: int, google_status: str
) -> None:
    with pytest.raises(errors.APIError) as raised:
        await gemini.models.generate_content(
            model=MODEL, contents=PROMPT, config=fault(f"status={status}")
        )
    assert (raised.value.code, raised.value.status) == (status, google_status)


@pytest.mark.parametrize("path", ROUTES)
async def test_a_status_google_has_no_name_for_is_still_googles_shape(
    http: httpx.AsyncClient, token: str, path: str
) -> None:
    # Gemini is Google's own model: no other provider's error shape to pass on.
    answer = await post(http, path, BODY, token, **{"x-mock-fault": "status=529"})
    google_error(answer, 529, "UNKNOWN")


async def test_reset_after_drops_a_plain_request(http: httpx.AsyncClient, token: str) -> None:
    with pytest.raises(httpx.TransportError):
        await post(http, GENERATE, BODY, token, **{"x-mock-fault": "reset_after=0"})


async def test_garbage_is_a_200_that_is_not_json(http: httpx.AsyncClient, token: str) -> None:
    answer = await post(http, GENERATE, BODY, token, **{"x-mock-fault": "garbage=1"})
    assert answer.status_code == 200
    with pytest.raises(ValueError):
        answer.json()


async def test_no_usage_leaves_usage_metadata_out(http: httpx.AsyncClient, token: str) -> None:
    answer = await post(http, GENERATE, BODY, token, **{"x-mock-fault": "no_usage=1"})
    assert answer.status_code == 200, answer.text
    assert "usageMetadata" not in answer.json()
    assert text_of(answer.json()) == REPLY


# --- streamGenerateContent ---


async def test_the_stream_rebuilds_the_answer_through_the_sdk(
    gemini: genai.client.AsyncClient,
) -> None:
    chunks = [
        chunk
        async for chunk in await gemini.models.generate_content_stream(model=MODEL, contents=PROMPT)
    ]

    assert "".join(chunk.text or "" for chunk in chunks) == REPLY
    assert len(chunks) == REPLY_TOKENS
    # Every event reports the prompt; the output count grows with the text sent.
    assert [usage(chunk).prompt_token_count for chunk in chunks] == [PROMPT_TOKENS] * len(chunks)
    assert [usage(chunk).candidates_token_count for chunk in chunks] == list(
        range(1, REPLY_TOKENS + 1)
    )
    assert [finish_reason(chunk) for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert finish_reason(last) == types.FinishReason.STOP
    assert usage(last).total_token_count == PROMPT_TOKENS + REPLY_TOKENS
    assert {chunk.response_id for chunk in chunks} == {last.response_id}
    assert {chunk.model_version for chunk in chunks} == {MODEL}


async def test_the_streams_last_event_carries_the_bill(http: httpx.AsyncClient, token: str) -> None:
    body = {
        **BODY,
        "systemInstruction": {"parts": [{"text": SYSTEM}]},
        "generationConfig": {"maxOutputTokens": 4, "thinkingConfig": {"thinkingBudget": 50}},
    }
    events = sse_events(await post(http, STREAM_SSE, body, token, **{"x-mock-fault": "cached=3"}))

    assert "".join(text_of(event) for event in events) == "Mock reply to:"
    assert events[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert events[-1]["usageMetadata"] == {
        "promptTokenCount": SYSTEM_PROMPT_TOKENS,
        "candidatesTokenCount": 4,
        "thoughtsTokenCount": 8,
        "cachedContentTokenCount": 3,
        "totalTokenCount": SYSTEM_PROMPT_TOKENS + 4 + 8,
        "trafficType": "ON_DEMAND",
    }


async def test_chunks_sets_how_many_events_carry_text(http: httpx.AsyncClient, token: str) -> None:
    events = sse_events(await post(http, STREAM_SSE, BODY, token, **{"x-mock-fault": "chunks=4"}))

    assert len(events) == 4
    assert "".join(text_of(event) for event in events) == "Mock reply to:"
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 4


async def test_a_chosen_reply_streams_as_exactly_those_pieces(
    http: httpx.AsyncClient, token: str
) -> None:
    pieces = ["Card 4111 ", "1111 1111 1111"]
    answer = await post(
        http, STREAM_SSE, BODY, token, **{"x-mock-reply": orjson.dumps(pieces).decode()}
    )
    assert [text_of(event) for event in sse_events(answer)] == pieces


async def test_error_after_ends_the_stream_with_googles_error_event(
    http: httpx.AsyncClient, token: str
) -> None:
    events = sse_events(
        await post(http, STREAM_SSE, BODY, token, **{"x-mock-fault": "error_after=2"})
    )

    *content, error = events
    assert [text_of(event) for event in content] == ["Mock", " reply"]
    assert all("finishReason" not in event["candidates"][0] for event in content)
    assert set(error) == {"error"}
    assert (error["error"]["code"], error["error"]["status"]) == (500, "INTERNAL")
    assert error["error"]["message"]


async def test_error_after_reaches_the_sdk_as_a_server_error(
    gemini: genai.client.AsyncClient,
) -> None:
    received: list[types.GenerateContentResponse] = []
    with pytest.raises(errors.ServerError) as raised:
        async for chunk in await gemini.models.generate_content_stream(
            model=MODEL, contents=PROMPT, config=fault("error_after=3")
        ):
            received.append(chunk)
    assert raised.value.code == 500
    assert "".join(chunk.text or "" for chunk in received) == "Mock reply to"


async def test_error_first_is_the_statuss_error_as_the_only_event(
    http: httpx.AsyncClient, token: str
) -> None:
    events = sse_events(
        await post(http, STREAM_SSE, BODY, token, **{"x-mock-fault": "error_first=429"})
    )
    assert events == [
        {
            "error": {
                "code": 429,
                "message": "Injected error 429 (x-mock-fault).",
                "status": "RESOURCE_EXHAUSTED",
            }
        }
    ]


async def test_error_after_past_the_end_still_fails_the_stream(
    http: httpx.AsyncClient, token: str
) -> None:
    events = sse_events(
        await post(http, STREAM_SSE, BODY, token, **{"x-mock-fault": "error_after=50"})
    )
    assert "".join(text_of(event) for event in events[:-1]) == REPLY
    assert all("finishReason" not in event["candidates"][0] for event in events[:-1])
    assert "error" in events[-1]


@pytest.mark.parametrize("reset_after", [2, 50])
async def test_reset_after_cuts_the_stream_before_it_finishes(
    gemini: genai.client.AsyncClient, reset_after: int
) -> None:
    received: list[types.GenerateContentResponse] = []
    # The SDK reads streams with aiohttp when it is installed (it is: the mock runs on it).
    with pytest.raises((aiohttp.ClientError, httpx.HTTPError, errors.APIError)):
        async for chunk in await gemini.models.generate_content_stream(
            model=MODEL, contents=PROMPT, config=fault(f"reset_after={reset_after}")
        ):
            received.append(chunk)
    assert len(received) <= reset_after
    assert all(finish_reason(chunk) is None for chunk in received)


async def test_garbage_in_a_stream_is_not_json(http: httpx.AsyncClient, token: str) -> None:
    answer = await post(http, STREAM_SSE, BODY, token, **{"x-mock-fault": "garbage=1"})
    assert answer.status_code == 200
    frames = answer.text.split("\r\n\r\n")[:-1]
    assert frames and all(frame.startswith("data: ") for frame in frames)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(frames[0][len("data: ") :])


async def test_without_alt_sse_the_stream_is_a_json_array_of_the_same_chunks(
    http: httpx.AsyncClient, token: str
) -> None:
    as_array = await post(http, STREAM, BODY, token)
    as_events = sse_events(await post(http, STREAM_SSE, BODY, token))

    assert as_array.status_code == 200, as_array.text
    assert as_array.headers["Content-Type"].startswith("application/json")
    chunks = as_array.json()
    assert isinstance(chunks, list)
    assert [text_of(chunk) for chunk in chunks] == [text_of(event) for event in as_events]
    assert [chunk["usageMetadata"] for chunk in chunks] == [
        event["usageMetadata"] for event in as_events
    ]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_an_error_inside_the_json_array_is_its_last_element(
    http: httpx.AsyncClient, token: str
) -> None:
    answer = await post(http, STREAM, BODY, token, **{"x-mock-fault": "error_after=1"})
    *content, error = answer.json()
    assert [text_of(chunk) for chunk in content] == ["Mock"]
    assert error["error"]["status"] == "INTERNAL"


# --- countTokens ---


async def test_count_tokens_counts_what_generate_content_reports(
    gemini: genai.client.AsyncClient,
) -> None:
    count = await gemini.models.count_tokens(model=MODEL, contents=PROMPT)
    assert count.total_tokens == PROMPT_TOKENS


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"contents": CONTENTS, "systemInstruction": {"parts": [{"text": SYSTEM}]}},
            id="contents",
        ),
        pytest.param(
            {
                "generateContentRequest": {
                    "model": f"models/{MODEL}",
                    "contents": CONTENTS,
                    "systemInstruction": {"parts": [{"text": SYSTEM}]},
                }
            },
            id="generate-content-request",
        ),
    ],
)
async def test_count_tokens_takes_either_body(
    http: httpx.AsyncClient, token: str, body: dict[str, Any]
) -> None:
    answer = await post(http, COUNT, body, token)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"totalTokens": SYSTEM_PROMPT_TOKENS}


# --- Refusals ---


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        pytest.param(GENERATE, {}, "contents", id="no-contents"),
        pytest.param(GENERATE, {"contents": "hello"}, "contents", id="contents-not-a-list"),
        pytest.param(GENERATE, {"contents": []}, "contents", id="no-content"),
        pytest.param(GENERATE, {"contents": ["hello"]}, "contents[0]", id="content-not-object"),
        pytest.param(
            GENERATE,
            {"contents": [{"role": "user", "parts": ["hello"]}]},
            "contents[0].parts[0]",
            id="part-not-object",
        ),
        pytest.param(
            STREAM_SSE,
            {"contents": [*CONTENTS, {"role": "assistant", "parts": [{"text": "Hi"}]}]},
            "contents[1].role",
            id="openai-role",
        ),
        pytest.param(
            GENERATE,
            {"contents": [{"role": "system", "parts": [{"text": "Hi"}]}]},
            "contents[0].role",
            id="system-role",
        ),
        pytest.param(
            GENERATE,
            {**BODY, "systemInstruction": {"parts": [7]}},
            "systemInstruction.parts[0]",
            id="system-part-not-object",
        ),
        pytest.param(
            GENERATE,
            {**BODY, "generationConfig": {"maxOutputTokens": "ten"}},
            "generationConfig.maxOutputTokens",
            id="max-output-tokens",
        ),
        pytest.param(
            GENERATE,
            {**BODY, "generationConfig": {"thinkingConfig": {"thinkingBudget": True}}},
            "generationConfig.thinkingConfig.thinkingBudget",
            id="thinking-budget",
        ),
        pytest.param(COUNT, {"messages": []}, "contents", id="count-without-contents"),
        pytest.param(
            COUNT,
            {"generateContentRequest": {"contents": [{"parts": "x"}]}},
            "contents[0].parts",
            id="count-parts-not-a-list",
        ),
    ],
)
async def test_a_body_google_refuses_is_an_invalid_argument_naming_the_field(
    http: httpx.AsyncClient, token: str, path: str, body: dict[str, Any], field: str
) -> None:
    answer = await post(http, path, body, token)
    message = google_error(answer, 400, "INVALID_ARGUMENT")
    assert f"'{field}'" in message


async def test_an_unknown_role_names_the_roles_google_takes(
    http: httpx.AsyncClient, token: str
) -> None:
    body = {"contents": [{"role": "assistant", "parts": [{"text": "Hi"}]}]}
    message = google_error(await post(http, GENERATE, body, token), 400, "INVALID_ARGUMENT")
    assert "Please use a valid role: user, model." in message


async def test_a_body_that_is_not_json_is_an_invalid_argument(
    http: httpx.AsyncClient, token: str
) -> None:
    answer = await http.post(GENERATE, content=b"{not json", headers=bearer(token))
    google_error(answer, 400, "INVALID_ARGUMENT")


async def test_the_sdk_sees_a_refusal_as_a_client_error(
    gemini: genai.client.AsyncClient,
) -> None:
    with pytest.raises(errors.ClientError) as raised:
        await gemini.models.generate_content(
            model=MODEL, contents=types.Content(role="assistant", parts=[types.Part(text="Hi")])
        )
    assert (raised.value.code, raised.value.status) == (400, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    "model",
    [
        pytest.param("claude-sonnet-4-5@20250929", id="claude"),
        pytest.param("gpt-4o", id="openai"),
        pytest.param("llama-3.3-70b", id="llama"),
    ],
)
async def test_a_model_that_is_not_googles_is_not_found(
    http: httpx.AsyncClient, token: str, model: str
) -> None:
    path = f"{LOCATION}/publishers/google/models/{model}:generateContent"
    message = google_error(await post(http, path, BODY, token), 404, "NOT_FOUND")
    assert f"publishers/google/models/{model}" in message


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f"{MODEL_PATH}:predict", id="another-method"),
        pytest.param(
            f"{LOCATION}/publishers/anthropic/models/{MODEL}:generateContent", id="anthropic"
        ),
    ],
)
async def test_a_method_or_publisher_vertex_does_not_serve_is_not_found(
    http: httpx.AsyncClient, token: str, path: str
) -> None:
    google_error(await post(http, path, BODY, token), 404, "NOT_FOUND")


async def test_gemma_is_googles_too(http: httpx.AsyncClient, token: str) -> None:
    path = f"{LOCATION}/publishers/google/models/gemma-3-27b-it:generateContent"
    answer = await post(http, path, BODY, token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["modelVersion"] == "gemma-3-27b-it"


# --- The Vertex checks before any of it ---


@pytest.mark.parametrize("path", ROUTES)
async def test_a_route_without_a_token_the_mock_issued_is_unauthenticated(
    http: httpx.AsyncClient, path: str
) -> None:
    answer = await http.post(path, json=BODY, headers=bearer("ya29.someone-elses"))
    google_error(answer, 401, "UNAUTHENTICATED")


@pytest.mark.parametrize("path", ROUTES)
async def test_another_project_is_permission_denied(
    http: httpx.AsyncClient, token: str, path: str
) -> None:
    other = path.replace(f"/projects/{PROJECT}/", "/projects/someone-else/")
    google_error(await post(http, other, BODY, token), 403, "PERMISSION_DENIED")


@pytest.mark.parametrize("path", ROUTES)
async def test_another_region_is_not_found(http: httpx.AsyncClient, token: str, path: str) -> None:
    other = path.replace(f"/locations/{REGION}/", "/locations/europe-west1/")
    google_error(await post(http, other, BODY, token), 404, "NOT_FOUND")


async def test_the_record_shows_the_request_as_the_client_sent_it(
    http: httpx.AsyncClient, token: str
) -> None:
    await http.delete("/_mock/requests")
    answer = await post(http, STREAM_SSE, BODY, token)
    assert answer.status_code == 200

    [recorded] = (await http.get("/_mock/requests")).json()
    assert recorded["path"] == STREAM
    assert recorded["query_string"] == "alt=sse"
    assert recorded["json"] == BODY

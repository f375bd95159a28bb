"""The mock keeps the Responses API responses it creates, as OpenAI does, and serves them back:
``GET``/``DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items`` and ``POST
/v1/responses/{id}/cancel``, read with the official openai client and, for what it hides (the
delete answer, status codes, the Allow header), with raw httpx.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.responses import Response

from extproc.mock_llm.responses_store import ResponseStore

AUTH = {"Authorization": "Bearer sk-test"}
MODEL = "gpt-4o-mini"
QUESTION = "Say hello, mock!"
# Typed loosely: the client's TypedDicts cannot tell these mixed items apart.
THREE_TURNS: list[Any] = [
    {"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
    {"role": "assistant", "content": "Hello again."},
    {"type": "message", "role": "user", "content": "What is a lighthouse?"},
]


def not_found(response_id: str) -> dict[str, Any]:
    return {
        "error": {
            "message": f"Response with id '{response_id}' not found.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


async def stored_three_turns(client: AsyncOpenAI) -> Response:
    return await client.responses.create(model=MODEL, input=THREE_TURNS)


# --- Retrieve --------------------------------------------------------------------------------


async def test_a_created_response_is_retrieved_as_it_was_answered(
    openai_client: AsyncOpenAI,
) -> None:
    created = await openai_client.responses.create(model=MODEL, input=QUESTION)

    retrieved = await openai_client.responses.retrieve(created.id)

    assert retrieved.to_dict() == created.to_dict()
    assert retrieved.output_text == "Mock reply to: " + QUESTION


async def test_a_streamed_response_is_retrieved_as_its_final_event_carried_it(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.responses.create(model=MODEL, input=QUESTION, stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    final = events[-1].response

    retrieved = await openai_client.responses.retrieve(final.id)

    assert retrieved.to_dict() == final.to_dict()
    assert retrieved.usage is not None


async def test_a_failed_stream_is_kept_as_it_failed(openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.responses.create(
        model=MODEL, input=QUESTION, stream=True, extra_headers={"x-mock-fault": "error_after=1"}
    )
    created_id = ""
    with pytest.raises(openai.APIError):
        async for event in stream:
            if event.type == "response.created":
                created_id = event.response.id

    retrieved = await openai_client.responses.retrieve(created_id)

    assert retrieved.status == "failed"
    assert retrieved.error is not None
    assert retrieved.error.code == "server_error"


async def test_a_stream_cut_before_its_terminal_event_is_not_kept(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.responses.create(
        model=MODEL, input=QUESTION, stream=True, extra_headers={"x-mock-fault": "reset_after=1"}
    )
    created_id = ""
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        async for event in stream:
            if event.type == "response.created":
                created_id = event.response.id

    assert created_id
    with pytest.raises(openai.NotFoundError):
        await openai_client.responses.retrieve(created_id)


async def test_a_background_stream_is_kept_queued_from_its_start(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.responses.create(
        model=MODEL,
        input=QUESTION,
        stream=True,
        background=True,
        extra_headers={"x-mock-fault": "reset_after=1"},
    )
    created_id = ""
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        async for event in stream:
            if event.type == "response.created":
                created_id = event.response.id

    # It never ended, so it is still as it started: queued, and so cancellable.
    assert (await openai_client.responses.retrieve(created_id)).status == "queued"
    assert (await openai_client.responses.cancel(created_id)).status == "cancelled"


async def test_a_finished_background_stream_is_kept_as_it_ended(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.responses.create(
        model=MODEL, input=QUESTION, stream=True, background=True
    )
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"

    retrieved = await openai_client.responses.retrieve(events[-1].response.id)

    assert retrieved.to_dict() == events[-1].response.to_dict()
    # Finished: cancelling it changes nothing.
    assert (await openai_client.responses.cancel(retrieved.id)).status == "completed"


async def test_a_background_response_is_kept_queued(openai_client: AsyncOpenAI) -> None:
    created = await openai_client.responses.create(model=MODEL, input=QUESTION, background=True)

    retrieved = await openai_client.responses.retrieve(created.id)

    assert retrieved.status == "queued"
    assert retrieved.to_dict() == created.to_dict()


async def test_a_response_created_with_store_false_is_not_kept(
    openai_client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    created = await openai_client.responses.create(model=MODEL, input=QUESTION, store=False)

    with pytest.raises(openai.NotFoundError):
        await openai_client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await openai_client.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        await openai_client.responses.cancel(created.id)
    deleted = await http.delete(f"/v1/responses/{created.id}", headers=AUTH)
    assert deleted.status_code == 404
    assert deleted.json() == not_found(created.id)


async def test_an_unknown_id_is_openais_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/responses/resp_never_made", headers=AUTH)

    assert response.status_code == 404
    assert response.json() == not_found("resp_never_made")


async def test_retrieve_behind_a_gateway_route_prefix(
    openai_client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    created = await openai_client.responses.create(model=MODEL, input=QUESTION)

    response = await http.get(f"/openai/v1/responses/{created.id}", headers=AUTH)

    assert response.status_code == 200
    assert response.json()["id"] == created.id


async def test_retrieve_as_a_stream_is_refused_naming_stream(
    openai_client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    created = await openai_client.responses.create(model=MODEL, input=QUESTION)

    response = await http.get(f"/v1/responses/{created.id}?stream=true", headers=AUTH)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stream"


async def test_stored_responses_want_a_key(
    openai_client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    created = await openai_client.responses.create(model=MODEL, input=QUESTION)

    response = await http.get(f"/v1/responses/{created.id}")

    assert response.status_code == 401


# --- Delete ----------------------------------------------------------------------------------


async def test_delete_answers_deleted_and_the_response_is_gone(
    openai_client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    created = await openai_client.responses.create(model=MODEL, input=QUESTION)

    deleted = await http.delete(f"/v1/responses/{created.id}", headers=AUTH)

    assert deleted.status_code == 200
    assert deleted.json() == {"id": created.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError) as caught:
        await openai_client.responses.retrieve(created.id)
    assert caught.value.body == not_found(created.id)["error"]
    with pytest.raises(openai.NotFoundError):
        await openai_client.responses.input_items.list(created.id)


async def test_the_official_client_deletes_once(openai_client: AsyncOpenAI) -> None:
    created = await openai_client.responses.create(model=MODEL, input=QUESTION)

    await openai_client.responses.delete(created.id)

    with pytest.raises(openai.NotFoundError):
        await openai_client.responses.delete(created.id)


# --- Input items -----------------------------------------------------------------------------


async def test_a_string_input_is_listed_as_one_user_message(
    openai_client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    created = await openai_client.responses.create(
        model=MODEL, input=QUESTION, instructions="Be brief."
    )

    listed = await http.get(f"/v1/responses/{created.id}/input_items", headers=AUTH)

    assert listed.status_code == 200
    body = listed.json()
    (item,) = body["data"]
    assert item["id"].startswith("msg_")
    assert item["type"] == "message"
    assert item["role"] == "user"
    assert item["content"] == [{"type": "input_text", "text": QUESTION}]
    # Instructions are not an input item: OpenAI lists only what `input` held.
    assert body == {
        "object": "list",
        "data": [item],
        "first_id": item["id"],
        "last_id": item["id"],
        "has_more": False,
    }


async def test_a_list_input_is_listed_newest_first_with_ids(openai_client: AsyncOpenAI) -> None:
    created = await stored_three_turns(openai_client)

    page = await openai_client.responses.input_items.list(created.id)

    items = [item.to_dict() for item in page.data]
    assert [item["role"] for item in items] == ["user", "assistant", "developer"]
    assert len({item["id"] for item in items}) == 3
    assert items[0]["content"] == [{"type": "input_text", "text": "What is a lighthouse?"}]
    assert items[1]["content"][0]["type"] == "output_text"
    assert items[1]["content"][0]["text"] == "Hello again."
    assert items[2]["content"] == [{"type": "input_text", "text": "Be brief."}]
    assert page.has_more is False


async def test_input_items_page_with_limit_and_after_in_either_order(
    openai_client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    created = await stored_three_turns(openai_client)
    path = f"/v1/responses/{created.id}/input_items"

    first = (await http.get(path, params={"order": "asc", "limit": 2}, headers=AUTH)).json()
    assert [item["role"] for item in first["data"]] == ["developer", "assistant"]
    assert first["has_more"] is True
    assert first["first_id"] == first["data"][0]["id"]
    assert first["last_id"] == first["data"][1]["id"]
    after = {"order": "asc", "limit": 2, "after": first["last_id"]}
    second = (await http.get(path, params=after, headers=AUTH)).json()
    assert [item["role"] for item in second["data"]] == ["user"]
    assert second["has_more"] is False

    # The client follows `after` itself, page by page, in the order asked.
    asc = [
        item.id
        async for item in openai_client.responses.input_items.list(created.id, order="asc", limit=1)
    ]
    desc = [item.id async for item in openai_client.responses.input_items.list(created.id, limit=1)]
    assert asc == [item["id"] for item in first["data"] + second["data"]]
    assert desc == asc[::-1]


async def test_an_input_item_id_sent_is_kept(openai_client: AsyncOpenAI) -> None:
    turns: list[Any] = [{"id": "msg_mine", "type": "message", "role": "user", "content": "Hi"}]
    created = await openai_client.responses.create(model=MODEL, input=turns)

    page = await openai_client.responses.input_items.list(created.id)

    assert [item.id for item in page.data] == ["msg_mine"]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"after": "msg_not_an_item"}, "after"),
    ],
)
async def test_bad_input_items_queries_get_400s_naming_the_param(
    openai_client: AsyncOpenAI, http: httpx.AsyncClient, query: dict[str, Any], param: str
) -> None:
    created = await openai_client.responses.create(model=MODEL, input=QUESTION)

    response = await http.get(f"/v1/responses/{created.id}/input_items", params=query, headers=AUTH)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


# --- Cancel ----------------------------------------------------------------------------------


async def test_cancelling_a_response_not_made_in_background_is_openais_400(
    openai_client: AsyncOpenAI,
) -> None:
    created = await openai_client.responses.create(model=MODEL, input=QUESTION)

    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.responses.cancel(created.id)

    assert caught.value.body == {
        "message": "Cannot cancel a synchronous response.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert (await openai_client.responses.retrieve(created.id)).status == "completed"


async def test_cancelling_a_queued_background_response_returns_it_cancelled(
    openai_client: AsyncOpenAI,
) -> None:
    created = await openai_client.responses.create(model=MODEL, input=QUESTION, background=True)

    cancelled = await openai_client.responses.cancel(created.id)

    assert cancelled.id == created.id
    assert cancelled.status == "cancelled"
    assert cancelled.background is True
    assert (await openai_client.responses.retrieve(created.id)).status == "cancelled"
    # Cancelling again changes nothing and is no error.
    assert (await openai_client.responses.cancel(created.id)).status == "cancelled"


# --- Routing and the record ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix", "allowed"),
    [
        ("PUT", "", "GET, DELETE"),
        ("POST", "", "GET, DELETE"),
        ("POST", "/input_items", "GET"),
        ("GET", "/cancel", "POST"),
    ],
)
async def test_a_wrong_method_on_a_stored_response_path_is_405(
    http: httpx.AsyncClient, method: str, suffix: str, allowed: str
) -> None:
    response = await http.request(method, f"/v1/responses/resp_any{suffix}", headers=AUTH)

    assert response.status_code == 405
    assert response.headers["Allow"] == allowed


async def test_the_create_endpoints_keep_their_paths(http: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "input": QUESTION}
    compact = await http.post("/v1/responses/compact", json=body, headers=AUTH)
    counted = await http.post("/v1/responses/input_tokens", json=body, headers=AUTH)
    created = await http.post("/v1/responses", json=body, headers=AUTH)

    assert compact.json()["object"] == "response.compaction"
    assert counted.json()["object"] == "response.input_tokens"
    assert created.json()["object"] == "response"


async def test_stored_response_requests_are_recorded_with_method_and_path(
    openai_client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    created = await openai_client.responses.create(model=MODEL, input=QUESTION, background=True)
    await http.delete("/_mock/requests")

    await openai_client.responses.retrieve(created.id)
    await openai_client.responses.input_items.list(created.id, limit=5)
    await openai_client.responses.cancel(created.id)
    await openai_client.responses.delete(created.id)

    recorded = (await http.get("/_mock/requests")).json()
    assert [(r["method"], r["path"]) for r in recorded] == [
        ("GET", f"/v1/responses/{created.id}"),
        ("GET", f"/v1/responses/{created.id}/input_items"),
        ("POST", f"/v1/responses/{created.id}/cancel"),
        ("DELETE", f"/v1/responses/{created.id}"),
    ]
    assert recorded[1]["query_string"] == "limit=5"


def test_the_store_keeps_the_newest_responses_and_drops_the_oldest() -> None:
    store = ResponseStore(capacity=2)
    for n in (1, 2, 3):
        store.keep({"id": f"resp_{n}", "object": "response"}, [])

    assert store.get("resp_1") is None
    assert [store.get(f"resp_{n}") is not None for n in (2, 3)] == [True, True]
    assert len(store) == 2


# --- A continuation reads the stored context, and is billed for it ----------------------------


async def test_a_continuation_is_billed_the_stored_context_it_reads(
    openai_client: AsyncOpenAI,
) -> None:
    # OpenAI bills the turns a previous_response_id brings in as input: each turn of a chain
    # costs more than its own text. The gateway reserves that context for a continuation;
    # a mock that counted the new turn alone could never show the reservation and the bill
    # agreeing.
    first = await openai_client.responses.create(model=MODEL, input=QUESTION)
    alone = await openai_client.responses.create(model=MODEL, input="And then?", store=False)
    second = await openai_client.responses.create(
        model=MODEL, input="And then?", previous_response_id=first.id
    )
    assert first.usage is not None and alone.usage is not None and second.usage is not None
    assert second.usage.input_tokens == alone.usage.input_tokens + first.usage.total_tokens

    # Streamed, and one turn further down the chain: the second's total holds the first's.
    async with await openai_client.responses.create(
        model=MODEL, input="And then?", previous_response_id=second.id, stream=True
    ) as events:
        final = [event async for event in events][-1]
    assert final.type == "response.completed" and final.response.usage is not None
    third = final.response.usage.input_tokens
    assert third == alone.usage.input_tokens + second.usage.total_tokens

    # A token count of the same continuation counts what that call would be billed.
    counted = await openai_client.responses.input_tokens.count(
        model=MODEL, input="And then?", previous_response_id=second.id
    )
    assert counted.input_tokens == third


async def test_a_continuation_of_a_response_the_mock_does_not_keep_reads_no_context(
    openai_client: AsyncOpenAI,
) -> None:
    unkept = await openai_client.responses.create(model=MODEL, input=QUESTION, store=False)
    alone = await openai_client.responses.create(model=MODEL, input="And then?", store=False)
    after = await openai_client.responses.create(
        model=MODEL, input="And then?", previous_response_id=unkept.id
    )
    assert alone.usage is not None and after.usage is not None
    assert after.usage.input_tokens == alone.usage.input_tokens

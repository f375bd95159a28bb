"""The mock's stored Responses API responses, and the endpoints that serve them back.

OpenAI keeps every response created with ``store`` not false (its default is true), so a
client can read it again. The mock does too, in memory and per application (``ResponseStore``:
at most the newest 10,000, the oldest dropped first), with the input items of the request that
made it (``listed_input_items``). ``responses_api`` keeps a JSON answer as it sends it (a
background one ``queued``), a stream when its terminal event goes out (the document that
event carries) and a background stream from its ``response.created`` (``queued``) on.

The endpoints (``StoredResponsesEndpoints``), bearer key required, faults ``status`` and
``delay`` as elsewhere:

- ``GET .../responses/{id}``: the stored document, as created (a ``stream`` query other than
  ``false`` is a 400: the mock does not replay streams).
- ``DELETE .../responses/{id}``: forgets it; ``{"id", "object": "response", "deleted": true}``.
- ``GET .../responses/{id}/input_items``: OpenAI's list, ``{"object": "list", "data",
  "first_id", "last_id", "has_more"}``, with ``limit`` (1..100, default 20), ``order``
  (``asc`` / ``desc``, default ``desc``: newest first) and ``after`` (an item id: the items
  after it in that order; one the response does not hold is a 400 naming ``after``).
- ``POST .../responses/{id}/cancel``: a response not made in background is OpenAI's 400
  "Cannot cancel a synchronous response."; a ``queued`` or ``in_progress`` background one
  becomes ``cancelled`` and is returned; a finished one is returned as it is.

An id the mock does not hold (never made, deleted, made with ``store: false``, dropped) is
OpenAI's 404 ``Response with id '<id>' not found.``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.faults import Fault
from extproc.mock_llm.openai_api import InvalidRequestError, error_response, precheck
from extproc.mock_llm.recorder import Body

STORE_CAPACITY = 10_000
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
ORDERS = ("asc", "desc")
# The statuses a background response can still be cancelled from.
RUNNING = ("queued", "in_progress")
# The wording OpenAI-compatible servers (vLLM, SGLang) answer with; OpenAI's reference
# documents the rule but not the message.
SYNCHRONOUS_CANCEL = "Cannot cancel a synchronous response."

_JSON_HEADERS = {"Content-Type": "application/json"}
# Matched by suffix, as every mock path is, so gateway route prefixes still reach it. The id
# is one path segment; the create endpoints' own suffixes are matched before this.
_STORED_PATH = re.compile(r"/responses/(?P<id>[^/]+)(?P<sub>/input_items|/cancel)?$")

Endpoint = Callable[[web.Request, Body], Awaitable[web.StreamResponse]]


# --- The store -----------------------------------------------------------------------------------


@dataclass(slots=True)
class StoredResponse:
    document: dict[str, Any]  # the response as last sent; cancel replaces it
    input_items: list[dict[str, Any]]  # oldest first, as the request held them


class ResponseStore:
    """The responses one mock application keeps, newest last, bounded."""

    def __init__(self, capacity: int = STORE_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("the response store must hold at least one response")
        self._capacity = capacity
        self._responses: OrderedDict[str, StoredResponse] = OrderedDict()

    def keep(self, document: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        """Keep ``document`` under its id, replacing an earlier version (a background stream's
        queued one) and dropping the oldest response when the store is full."""
        response_id = document["id"]
        self._responses.pop(response_id, None)
        self._responses[response_id] = StoredResponse(document, input_items)
        while len(self._responses) > self._capacity:
            self._responses.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        return self._responses.get(response_id)

    def delete(self, response_id: str) -> bool:
        return self._responses.pop(response_id, None) is not None

    def __len__(self) -> int:
        return len(self._responses)


def _listed_message(item: dict[str, Any], item_id: str) -> dict[str, Any]:
    """An input message as OpenAI lists it: its string content as one text part."""
    role = item.get("role")
    content = item.get("content")
    if isinstance(content, str):
        # An assistant turn is an earlier answer, so its text is an output part.
        if role == "assistant":
            content = [{"type": "output_text", "text": content, "annotations": []}]
        else:
            content = [{"type": "input_text", "text": content}]
    return {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "content": content,
        "role": role,
    }


def listed_input_items(value: object, response_id: str) -> list[dict[str, Any]]:
    """A request's ``input`` (already validated) as OpenAI lists it back, oldest first: a
    string is one user message; each item keeps the ``id`` it was sent with or gets one."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list):
        return []  # no input: a turn of stored context
    number = response_id.removeprefix("resp_")
    items: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            continue
        is_message = item.get("type", "message") == "message"
        sent_id = item.get("id")
        prefix = "msg" if is_message else "item"
        item_id = sent_id if isinstance(sent_id, str) else f"{prefix}_{number}_in_{index}"
        if is_message:
            items.append(_listed_message(item, item_id))
        else:
            items.append({"id": item_id, **{k: v for k, v in item.items() if k != "id"}})
    return items


# --- Listing input items -------------------------------------------------------------------------


def _limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidRequestError(
            f"Invalid 'limit': expected an integer, but got {raw!r} instead.",
            "limit",
            "invalid_type",
        ) from None
    if limit < 1:
        raise InvalidRequestError(
            "Invalid 'limit': integer below minimum value. Expected a value >= 1, but got "
            f"{limit} instead.",
            "limit",
            "integer_below_min_value",
        )
    if limit > MAX_LIMIT:
        raise InvalidRequestError(
            f"Invalid 'limit': integer above maximum value. Expected a value <= {MAX_LIMIT}, "
            f"but got {limit} instead.",
            "limit",
            "integer_above_max_value",
        )
    return limit


def _order(query: Mapping[str, str]) -> str:
    order = query.get("order", "desc")
    if order not in ORDERS:
        raise InvalidRequestError(
            f"Invalid value: {order!r}. Supported values are: 'asc' and 'desc'.",
            "order",
            "invalid_value",
        )
    return order


def input_items_page(items: list[dict[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """One page of ``items`` (oldest first) as OpenAI lists it for ``query``'s ``limit``,
    ``order`` and ``after``; InvalidRequestError names a query parameter it cannot take."""
    limit, order = _limit(query), _order(query)
    ordered = items if order == "asc" else items[::-1]
    after = query.get("after")
    if after is not None:
        position = next((i for i, item in enumerate(ordered) if item["id"] == after), None)
        if position is None:
            raise InvalidRequestError(
                f"Invalid 'after': this response has no input item with id {after!r}.",
                "after",
                "invalid_value",
            )
        ordered = ordered[position + 1 :]
    data = ordered[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(ordered) > limit,
    }


# --- The endpoints -------------------------------------------------------------------------------


def _json(document: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(document), headers=_JSON_HEADERS)


def _not_found(response_id: str) -> web.Response:
    return error_response(404, f"Response with id '{response_id}' not found.")


class StoredResponsesEndpoints:
    """Serves a ``ResponseStore``'s responses; one instance per mock application."""

    def __init__(self, store: ResponseStore, *, default_fault: Fault) -> None:
        self._store = store
        self._default_fault = default_fault

    def routes(self, path: str) -> dict[str, Endpoint] | None:
        """The endpoint for each method a stored response's ``path`` takes, or None."""
        match = _STORED_PATH.search(path)
        if match is None:
            return None
        response_id, sub = match["id"], match["sub"]
        if sub == "/input_items":
            return {"GET": partial(self.input_items, response_id)}
        if sub == "/cancel":
            return {"POST": partial(self.cancel, response_id)}
        return {
            "GET": partial(self.retrieve, response_id),
            "DELETE": partial(self.delete, response_id),
        }

    async def _stored(
        self, request: web.Request, response_id: str
    ) -> StoredResponse | web.Response:
        """The stored response, or the answer that ends the request (no key, a fault, 404)."""
        fault = await precheck(request, self._default_fault)
        if isinstance(fault, web.Response):
            return fault
        stored = self._store.get(response_id)
        return _not_found(response_id) if stored is None else stored

    async def retrieve(
        self, response_id: str, request: web.Request, body: Body
    ) -> web.StreamResponse:
        stored = await self._stored(request, response_id)
        if isinstance(stored, web.Response):
            return stored
        if request.query.get("stream", "false") != "false":
            return error_response(
                400, "The mock does not replay a stored response as a stream.", param="stream"
            )
        return _json(stored.document)

    async def delete(
        self, response_id: str, request: web.Request, body: Body
    ) -> web.StreamResponse:
        stored = await self._stored(request, response_id)
        if isinstance(stored, web.Response):
            return stored
        self._store.delete(response_id)
        return _json({"id": response_id, "object": "response", "deleted": True})

    async def input_items(
        self, response_id: str, request: web.Request, body: Body
    ) -> web.StreamResponse:
        stored = await self._stored(request, response_id)
        if isinstance(stored, web.Response):
            return stored
        try:
            page = input_items_page(stored.input_items, request.query)
        except InvalidRequestError as exc:
            return error_response(400, exc.message, param=exc.param, code=exc.code)
        return _json(page)

    async def cancel(
        self, response_id: str, request: web.Request, body: Body
    ) -> web.StreamResponse:
        stored = await self._stored(request, response_id)
        if isinstance(stored, web.Response):
            return stored
        if stored.document.get("background") is not True:
            return error_response(400, SYNCHRONOUS_CANCEL)
        if stored.document.get("status") in RUNNING:
            stored.document = {**stored.document, "status": "cancelled"}
        return _json(stored.document)

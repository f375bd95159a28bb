"""The mock's Responses API compaction and token count, answered as JSON.

``POST .../responses/compact`` (OpenAI's ``client.responses.compact``) takes ``model``,
``input`` (a string, an array of items, or null / left out with a
``previous_response_id``, which is not looked up) and ``instructions``, read as the
Responses endpoint reads them (``responses_api``); other fields are accepted and ignored,
but a ``stream`` other than ``false``: the endpoint does not stream, a 400
``unknown_parameter``. The answer is OpenAI's compacted window::

    {"id": "cmp_mock_<n>", "object": "response.compaction", "created_at": <unix seconds>,
     "output": [<each user message of the input, in order>, <one compaction item>],
     "usage": {"input_tokens", "input_tokens_details": {"cached_tokens"},
               "output_tokens", "output_tokens_details": {"reasoning_tokens": 0},
               "total_tokens"}}

A user message kept is ``{"id", "type": "message", "status": "completed", "role": "user",
"content": [{"type": "input_text", "text": <its text>}]}``; the compaction item is
``{"id": "cmpi_mock_<n>", "type": "compaction", "encrypted_content": <base64 of the
summary>}``. The summary is the reply a ``/responses`` call with the same body would
get (``tokens.reply_text``), so ``input_tokens`` is that call's (``tokens``' rules,
``instructions`` one message before the input) and ``output_tokens`` is the summary's
token count.

``POST .../responses/input_tokens`` (``client.responses.input_tokens.count``) takes a
``/responses`` body (checked as that endpoint checks it, but ``stream``, refused as above)
and answers ``{"object": "response.input_tokens", "input_tokens": N}``, N being the
``input_tokens`` that ``/responses`` call would report (a ``previous_response_id`` the mock
keeps included: ``responses_api.stored_context_tokens``).

Faults (``x-mock-fault``): ``status``, ``delay``, ``reset_after`` (the connection dropped
at once), ``garbage``; for a compaction also ``cached`` and ``no_usage`` (``usage`` null).
"""

from __future__ import annotations

import base64
import itertools
import time
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.faults import Fault
from extproc.mock_llm.openai_api import (
    InvalidRequestError,
    error_response,
    json_request,
    precheck,
)
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.responses_api import (
    ResponsesRequest,
    input_messages,
    parse_responses_request,
    stored_context_tokens,
)
from extproc.mock_llm.responses_store import ResponseStore
from extproc.mock_llm.tokens import count_tokens, prompt_tokens, reply_text

_JSON_HEADERS = {"Content-Type": "application/json"}
_GARBAGE = b'{"id": "cmp_garbage", "object": "response.compaction", this is not json'


def _refuse_stream(doc: dict[str, Any]) -> None:
    """Neither endpoint streams: a stream asked for is refused as an unknown parameter
    (``false``, which asks for nothing, is let through)."""
    if doc.get("stream", False) is not False:
        raise InvalidRequestError("Unknown parameter: 'stream'.", "stream", "unknown_parameter")


def compaction_messages(body: Body) -> tuple[str, list[dict[str, Any]]]:
    """A compaction request's model and its input as chat messages (``instructions`` first,
    as ``system``), the shape ``tokens`` reads."""
    doc, model = json_request(body)
    _refuse_stream(doc)
    stored = doc.get("previous_response_id") is not None
    messages = input_messages(doc.get("input"), stored_context=stored)
    instructions = doc.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequestError(
                "Invalid type for 'instructions': expected a string.",
                "instructions",
                "invalid_type",
            )
        messages.insert(0, {"role": "system", "content": instructions})
    return model, messages


def _kept_message(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    }


def compaction(
    number: int, messages: list[dict[str, Any]], fault: Fault, created_at: int
) -> dict[str, Any]:
    """The compacted window of ``messages`` (the module docstring)."""
    summary = reply_text(messages)
    kept = [
        _kept_message(f"msg_mock_cmp_{number}_{index}", message["content"])
        for index, message in enumerate(m for m in messages if m["role"] == "user")
    ]
    item = {
        "id": f"cmpi_mock_{number}",
        "type": "compaction",
        "encrypted_content": base64.b64encode(summary.encode()).decode(),
    }
    prompt = prompt_tokens(messages)
    output = count_tokens(summary)
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": fault.cached_part(prompt)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + output,
    }
    return {
        "id": f"cmp_mock_{number}",
        "object": "response.compaction",
        "created_at": created_at,
        "output": [*kept, item],
        "usage": None if fault.no_usage else usage,
    }


def input_token_count(req: ResponsesRequest, context_tokens: int = 0) -> dict[str, Any]:
    """What ``/responses/input_tokens`` answers for a ``/responses`` body; ``context_tokens``:
    the stored context of the response it continues (``stored_context_tokens``)."""
    tokens = prompt_tokens(req.messages) + context_tokens
    return {"object": "response.input_tokens", "input_tokens": tokens}


def _faulted(request: web.Request, fault: Fault) -> web.Response | None:
    """The answer a fault puts in place of the endpoint's, if any."""
    if fault.reset_after is not None:
        if request.transport is not None:
            request.transport.abort()
        # aiohttp still wants a response; sending it fails quietly on the closed transport.
        return web.Response(status=500)
    if fault.garbage:
        return web.Response(body=_GARBAGE, headers=_JSON_HEADERS)
    return None


class CompactEndpoints:
    """``POST .../responses/compact`` and ``.../responses/input_tokens``; one instance per
    mock application."""

    def __init__(self, *, default_fault: Fault, store: ResponseStore | None = None) -> None:
        self._default_fault = default_fault
        # The responses ``/responses`` keeps: a count of a continuation reads their context.
        self._store = store if store is not None else ResponseStore()
        self._ids = itertools.count(1)

    async def compact(self, request: web.Request, body: Body) -> web.Response:
        fault = await precheck(request, self._default_fault)
        if isinstance(fault, web.Response):
            return fault
        try:
            _, messages = compaction_messages(body)
        except InvalidRequestError as exc:
            return error_response(400, exc.message, param=exc.param, code=exc.code)
        faulted = _faulted(request, fault)
        if faulted is not None:
            return faulted
        document = compaction(next(self._ids), messages, fault, int(time.time()))
        return web.Response(body=orjson.dumps(document), headers=_JSON_HEADERS)

    async def input_tokens(self, request: web.Request, body: Body) -> web.Response:
        fault = await precheck(request, self._default_fault)
        if isinstance(fault, web.Response):
            return fault
        try:
            doc, _ = json_request(body)
            _refuse_stream(doc)
            req = parse_responses_request(body)
        except InvalidRequestError as exc:
            return error_response(400, exc.message, param=exc.param, code=exc.code)
        faulted = _faulted(request, fault)
        if faulted is not None:
            return faulted
        counted = input_token_count(req, stored_context_tokens(self._store, req))
        return web.Response(body=orjson.dumps(counted), headers=_JSON_HEADERS)

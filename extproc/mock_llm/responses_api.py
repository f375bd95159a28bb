"""The mock's OpenAI Responses API: ``POST .../responses``, answered as JSON or as SSE events.

Requests are checked as OpenAI checks them: ``model``; ``input``, a string (one user
message) or an array of input items, of which messages (``{"role": "user" | "system" |
"developer" | "assistant", "content": str | [parts]}``, ``"type": "message"`` optional) are
read and other items (function calls and their outputs, reasoning, references) accepted and
ignored; ``input`` may be left out when the request names a stored ``prompt``, a
``previous_response_id`` or a ``conversation``, as OpenAI allows; ``instructions`` (a
string); ``max_output_tokens`` (an integer >= 16, as OpenAI requires); ``stream``,
``background``, ``store`` (booleans); ``previous_response_id`` (a string: a response the
mock keeps adds its context, below; any other id is accepted as one it does not hold);
``prompt`` (an object: the mock stores no prompts, so it reads one as a user message made
of its ``variables``' text, strings and ``input_text`` values joined with a space, before
the input); ``service_tier`` (as for chat completions); ``text.format`` (JSON answers, as
chat's ``response_format``). Other fields are accepted and ignored.

Replies and usage follow ``tokens``, through the chat rules: ``instructions`` is one more
message before the input, a string input is one user message, and a message's text is its
string content or its ``input_text`` / ``output_text`` parts joined with a space. So
``input_tokens`` = sum over those messages of (``count_tokens(text)`` + 4) + 2, exactly the
``prompt_tokens`` of the equivalent chat completion, and ``output_tokens`` = reply pieces.
A ``previous_response_id`` naming a response the mock keeps adds that response's
``total_tokens`` (its input, stored context included, and its output) to ``input_tokens``,
as OpenAI bills the stored context a continuation reads (``stored_context_tokens``).
``max_output_tokens`` keeps the first pieces and makes the response ``incomplete``
(``incomplete_details.reason`` "max_output_tokens"; a stream then ends with
``response.incomplete`` instead of ``response.completed``).

``background: true`` is answered as OpenAI answers it: JSON with ``status: "queued"``, no
output and no usage (the work is not done yet); a background stream starts ``queued``.

A response made with ``store`` not false is kept, as OpenAI keeps it, for the stored-response
endpoints of ``responses_store``: a JSON answer as sent, a stream as its terminal event
carries it, a background stream from its ``response.created`` on.

A stream is OpenAI's event sequence, each event ``event: <type>`` and ``data: <json>`` with a
``sequence_number`` from 0, and no ``[DONE]``: ``response.created``, ``response.in_progress``,
``response.output_item.added``, ``response.content_part.added``, one
``response.output_text.delta`` per reply piece, ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, then ``response.completed`` (or
``response.incomplete``) carrying the whole response with its usage.

Built-in tool calls on request, header ``x-mock-server-tool-use: web_search=N;file_search=M``
(the header Anthropic's mock reads for its server tools): the answer's ``output`` starts with
N ``web_search_call`` items (``action`` ``search``) and M ``file_search_call`` items, all
``completed``, before the message, as OpenAI shows the calls its tools made; the usage is
a plain answer's (OpenAI bills the calls per call). A stream shows each call before the
text, as OpenAI streams it: ``response.output_item.added`` (``in_progress``),
``response.<type>.in_progress``, ``.searching``, ``.completed``, then
``response.output_item.done``; the message follows at the next ``output_index``, and a
failed stream's ``response.failed`` still holds the calls made. Other tool names are a 400
naming the header: the mock has no item to show for them.

The ``image_generation`` tool, when the request's ``tools`` holds it, draws one picture
(``images_api``: the same tiny PNG, its prompt the reply text, ``quality`` from the tool
entry): an ``image_generation_call`` item (``result`` the picture's base64) before the
message, the tool echoed in ``tools`` with its ``model`` filled in (``gpt-image-1`` when
the request names none, as OpenAI fills in its default), and the picture's tokens in the
finished response's ``tool_usage.image_gen`` (beside ``tool_usage.web_search``), apart from
``usage``. A stream shows the call as OpenAI streams it (``response.output_item.added``,
``response.image_generation_call.in_progress``, ``.generating``, ``.completed``,
``response.output_item.done``) before the message.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.anthropic_api import (
    SERVER_TOOLS_HEADER,
    ServerToolSpecError,
    server_tool_requests,
)
from extproc.mock_llm.faults import Fault
from extproc.mock_llm.images_api import (
    DEFAULT_IMAGE_MODEL,
    PNG_BASE64,
    image_generation_usage,
)
from extproc.mock_llm.json_reply import json_reply
from extproc.mock_llm.openai_api import (
    InvalidRequestError,
    error_response,
    fault_error_fields,
    json_request,
    precheck,
    served_tier,
)
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.responses_store import ResponseStore, listed_input_items
from extproc.mock_llm.scripted import REPLY_HEADER, ScriptError, scripted_pieces
from extproc.mock_llm.tokens import prompt_tokens, reply_pieces, reply_text

MIN_OUTPUT_TOKENS = 16  # OpenAI refuses a smaller max_output_tokens
# Fields that name context the provider holds, which may stand in for ``input``.
_STORED_CONTEXT = ("prompt", "previous_response_id", "conversation")
ROLES = ("user", "system", "developer", "assistant")
# Content parts whose text counts: what users send, and what earlier answers sent back.
TEXT_PARTS = ("input_text", "output_text")

_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_GARBAGE = b'{"id": "resp_garbage", "object": "response", this is not json'
_GARBAGE_DATA = b"data: {this is not json\n\n"
_SERVER_ERROR_MESSAGE = (
    "The server had an error while processing your request. (injected by x-mock-fault)"
)
# The built-in tools whose calls the mock shows (x-mock-server-tool-use), by the name the
# header gives them (the tool's type in the request's ``tools``): the output item's type
# and its id's prefix.
CALL_ITEMS = {"web_search": ("web_search_call", "ws"), "file_search": ("file_search_call", "fs")}
# The type of the image generation tool, and the prefix of its calls' ids.
IMAGE_TOOL = "image_generation"
# The events that end a stream, each carrying the response as it ended: what OpenAI keeps.
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


# --- Requests ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    model: str
    # The input as chat messages ({"role", "content": text}), instructions first as "system":
    # the shape tokens' rules read, so both APIs count and reply alike.
    messages: list[dict[str, Any]]
    instructions: str | None
    max_output_tokens: int | None
    stream: bool
    background: bool
    store: bool
    previous_response_id: str | None
    text_format: dict[str, Any] | None  # text.format as asked
    asked_tier: str  # service_tier as asked, echoed until the response is done
    served_tier: str  # the tier that served it, shown once done
    input: Any = None  # ``input`` as sent, which a stored response lists back
    # The request's image_generation tool, its model filled in; None: it has none.
    image_tool: dict[str, Any] | None = None


def _invalid_type(param: str, expected: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid type for '{param}': expected {expected}.", param, "invalid_type"
    )


def _content_text(content: object, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid_type(param, "a string or an array of content parts")
    texts: list[str] = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _invalid_type(f"{param}[{index}]", "an object with a 'type'")
        text = part.get("text")
        if part["type"] in TEXT_PARTS and isinstance(text, str):
            texts.append(text)
    return " ".join(texts)


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    """An input message as a chat message holding its text."""
    role = item.get("role")
    if role not in ROLES:
        supported = ", ".join(f"'{r}'" for r in ROLES)
        raise InvalidRequestError(
            f"Invalid value: {role!r}. Supported values are: {supported}.",
            f"{param}.role",
            "invalid_value",
        )
    if "content" not in item:
        raise InvalidRequestError(
            f"Missing required parameter: '{param}.content'.",
            f"{param}.content",
            "missing_required_parameter",
        )
    return {"role": role, "content": _content_text(item["content"], f"{param}.content")}


def input_messages(value: object, *, stored_context: bool = False) -> list[dict[str, Any]]:
    """``input`` as chat messages; items other than messages count for nothing. With
    ``stored_context`` (a prompt, an earlier response, a conversation) it may be absent."""
    if value is None:
        if stored_context:
            return []
        raise InvalidRequestError(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _invalid_type("input", "a string or an array of input items")
    messages = []
    for index, item in enumerate(value):
        param = f"input[{index}]"
        if not isinstance(item, dict):
            raise _invalid_type(param, "an object")
        if item.get("type", "message") == "message":
            messages.append(_message(item, param))
    return messages


def prompt_message(prompt: object) -> dict[str, Any] | None:
    """A stored prompt as the mock reads it: a user message of its variables' text (the
    module docstring); None when the request names none or its variables hold no text."""
    if prompt is None:
        return None
    if not isinstance(prompt, dict) or not isinstance(prompt.get("id"), str):
        raise _invalid_type("prompt", "an object with a string 'id'")
    variables = prompt.get("variables")
    if variables is None:
        return None
    if not isinstance(variables, dict):
        raise _invalid_type("prompt.variables", "an object")
    texts: list[str] = []
    for name, value in variables.items():
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            text = value.get("text")
            if value.get("type") == "input_text" and isinstance(text, str):
                texts.append(text)
        else:
            raise _invalid_type(f"prompt.variables.{name}", "a string or an input object")
    return {"role": "user", "content": " ".join(texts)} if texts else None


def _optional(doc: dict[str, Any], name: str, kind: type, expected: str) -> Any:
    """``doc[name]`` when absent, null or a ``kind``; else OpenAI's 400 naming it."""
    value = doc.get(name)
    if value is None:
        return None
    # bool is an int subclass; `"max_output_tokens": true` must not mean 1.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _invalid_type(name, expected)
    return value


def _max_output_tokens(doc: dict[str, Any]) -> int | None:
    value: int | None = _optional(doc, "max_output_tokens", int, "an integer")
    if value is not None and value < MIN_OUTPUT_TOKENS:
        # OpenAI's own words.
        raise InvalidRequestError(
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
            f"{MIN_OUTPUT_TOKENS}, but got {value} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    return value


def _text_format(doc: dict[str, Any]) -> dict[str, Any] | None:
    text = doc.get("text")
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _invalid_type("text", "an object")
    fmt = text.get("format")
    if fmt is not None and not isinstance(fmt, dict):
        raise _invalid_type("text.format", "an object")
    return fmt


def _image_tool(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The ``image_generation`` entry of ``tools``, as a response echoes it."""
    tools = doc.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == IMAGE_TOOL:
            model = tool.get("model")
            named = model if isinstance(model, str) and model else DEFAULT_IMAGE_MODEL
            return {**tool, "model": named, "quality": tool.get("quality") or "auto"}
    return None


def parse_responses_request(body: Body) -> ResponsesRequest:
    """Validate the fields the mock relies on; everything else is accepted and ignored."""
    doc, model = json_request(body)
    stored = any(doc.get(name) is not None for name in _STORED_CONTEXT)
    messages = input_messages(doc.get("input"), stored_context=stored)
    prompt = prompt_message(doc.get("prompt"))
    if prompt is not None:
        messages.insert(0, prompt)
    instructions: str | None = _optional(doc, "instructions", str, "a string")
    if instructions is not None:
        messages.insert(0, {"role": "system", "content": instructions})
    store = _optional(doc, "store", bool, "a boolean")
    asked_tier = doc.get("service_tier")
    return ResponsesRequest(
        model=model,
        messages=messages,
        instructions=instructions,
        max_output_tokens=_max_output_tokens(doc),
        stream=bool(_optional(doc, "stream", bool, "a boolean")),
        background=bool(_optional(doc, "background", bool, "a boolean")),
        store=store is not False,  # OpenAI stores responses unless told not to
        previous_response_id=_optional(doc, "previous_response_id", str, "a string"),
        text_format=_text_format(doc),
        asked_tier=asked_tier if isinstance(asked_tier, str) else "auto",
        served_tier=served_tier(asked_tier),
        input=doc.get("input"),
        image_tool=_image_tool(doc),
    )


# --- Answers -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """What the model says and what it costs."""

    pieces: list[str]
    truncated: bool  # max_output_tokens cut it short
    input_tokens: int
    cached_tokens: int = 0
    # Built-in tool calls to show before the message (x-mock-server-tool-use): (tool, count).
    tool_calls: tuple[tuple[str, int], ...] = ()

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def status(self) -> str:
        return "incomplete" if self.truncated else "completed"

    def usage(self) -> dict[str, Any]:
        output_tokens = len(self.pieces)
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + output_tokens,
        }


def _as_response_format(text_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` in chat's ``response_format`` shape, which json_reply reads."""
    if text_format is None or text_format.get("type") != "json_schema":
        return text_format
    return {"type": "json_schema", "json_schema": {"schema": text_format.get("schema")}}


def stored_context_tokens(store: ResponseStore, req: ResponsesRequest) -> int:
    """The context a continuation reads from the response it names: that response's
    ``total_tokens`` when the mock keeps it (0 for an id it does not hold, or a response
    kept without usage, a background one still queued)."""
    if req.previous_response_id is None:
        return 0
    stored = store.get(req.previous_response_id)
    usage = stored.document.get("usage") if stored is not None else None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    return total if isinstance(total, int) and not isinstance(total, bool) else 0


def build_reply(
    req: ResponsesRequest, fault: Fault, scripted: list[str] | None, context_tokens: int = 0
) -> Reply:
    """The reply and its usage; ``context_tokens``: the stored context a continuation reads
    (``stored_context_tokens``), part of its input as OpenAI bills it."""
    prompt = prompt_tokens(req.messages) + context_tokens
    cached = fault.cached_part(prompt)
    if scripted is not None:
        return Reply(scripted, False, prompt, cached)
    as_json = json_reply(_as_response_format(req.text_format), reply_text(req.messages))
    pieces, truncated = reply_pieces(
        req.messages, max_tokens=req.max_output_tokens, chunks=fault.chunks, text=as_json
    )
    return Reply(pieces, truncated, prompt, cached)


def tool_calls_asked(headers: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    """The built-in tool calls a request asks the answer to show (``web_search=N;
    file_search=M``); ServerToolSpecError names a malformed pair or a tool with no item."""
    asked = server_tool_requests(headers)
    for name, _ in asked:
        if name not in CALL_ITEMS:
            known = ", ".join(CALL_ITEMS)
            raise ServerToolSpecError(
                f"{SERVER_TOOLS_HEADER}: the Responses API shows calls of {known}, not {name!r}"
            )
    return asked


def tool_call_item(tool: str, item_id: str, status: str) -> dict[str, Any]:
    """One built-in tool call as an output item, at ``status``."""
    if tool == "web_search":
        action = {"type": "search", "query": "mock search", "sources": None}
        return {"id": item_id, "type": "web_search_call", "status": status, "action": action}
    return {
        "id": item_id,
        "type": "file_search_call",
        "status": status,
        "queries": ["mock search"],
        "results": None,
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def message_item(message_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "status": status,
        "content": content,
        "role": "assistant",
    }


@dataclass(frozen=True, slots=True)
class ResponseShell:
    """One response's identity, and the request fields every view of it echoes."""

    req: ResponsesRequest
    response_id: str
    message_id: str
    created_at: int

    def document(
        self,
        status: str,
        *,
        output: list[dict[str, Any]] | None = None,
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The response object at ``status``, with the fields OpenAI sends in this order."""
        req = self.req
        done = status in ("completed", "incomplete", "failed")
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": req.background,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": None,
            "model": req.model,
            "output": output or [],
            "parallel_tool_calls": True,
            "previous_response_id": req.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            # OpenAI echoes the tier asked for until the response is done, then the one used.
            "service_tier": req.served_tier if done else req.asked_tier,
            "store": req.store,
            "temperature": 1.0,
            "text": {"format": req.text_format or {"type": "text"}},
            "tool_choice": "auto",
            "tools": [req.image_tool] if req.image_tool is not None else [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": {},
        }

    def tool_calls(self, reply: Reply) -> list[tuple[str, str]]:
        """The reply's built-in tool calls in output order, as (tool, item id)."""
        number = self.response_id.removeprefix("resp_mock_")
        tools = [tool for tool, count in reply.tool_calls for _ in range(count)]
        return [(tool, f"{CALL_ITEMS[tool][1]}_mock_{number}_{i}") for i, tool in enumerate(tools)]

    def output(self, reply: Reply, message: dict[str, Any]) -> list[dict[str, Any]]:
        """The response's output: the tool calls made, all completed, the picture drawn,
        then ``message``."""
        calls = [
            tool_call_item(tool, item_id, "completed") for tool, item_id in self.tool_calls(reply)
        ]
        if self.req.image_tool is not None:
            calls.append(self.image_call("completed"))
        return [*calls, message]

    @property
    def image_call_id(self) -> str:
        return f"ig_mock_{self.response_id.removeprefix('resp_mock_')}"

    def image_call(self, status: str) -> dict[str, Any]:
        """The image generation tool's call as an output item, its picture once done."""
        done = status == "completed"
        return {
            "id": self.image_call_id,
            "type": "image_generation_call",
            "status": status,
            "result": PNG_BASE64 if done else None,
        }

    def tool_usage(self, reply: Reply) -> dict[str, Any]:
        """``tool_usage`` as OpenAI reports it: the picture's tokens, no web search."""
        tool = self.req.image_tool or {}
        drawn = image_generation_usage(reply.text, str(tool.get("quality")))
        return {"image_gen": drawn, "web_search": {"num_requests": 0}}

    def finished(self, reply: Reply, *, with_usage: bool) -> dict[str, Any]:
        """The response once the reply is whole: completed, or incomplete when cut short."""
        item = message_item(self.message_id, reply.status, [output_text_part(reply.text)])
        usage = reply.usage() if with_usage else None
        document = self.document(reply.status, output=self.output(reply, item), usage=usage)
        if with_usage and self.req.image_tool is not None:
            document["tool_usage"] = self.tool_usage(reply)
        return document


# --- Streams -------------------------------------------------------------------------------------


# Told of each response document an event is about to carry, with the event's type.
ResponseListener = Callable[[str, dict[str, Any]], None]


class EventWriter:
    """Writes SSE events, numbering them; one write per event so each is its own HTTP chunk."""

    def __init__(
        self,
        response: web.StreamResponse,
        interval_s: float,
        garbage: bool,
        on_response: ResponseListener | None = None,
        first_delay_s: float = 0.0,
    ) -> None:
        self._response = response
        self._interval_s = interval_s
        self._first_delay_s = first_delay_s
        self._garbage = garbage
        self._on_response = on_response
        self._sequence = itertools.count()

    async def send(self, event_type: str, payload: dict[str, Any]) -> None:
        sequence_number = next(self._sequence)
        pause = self._interval_s if sequence_number else self._first_delay_s
        if pause:
            await asyncio.sleep(pause)
        head = b"event: " + event_type.encode() + b"\n"
        if self._garbage:
            await self._response.write(head + _GARBAGE_DATA)
            return
        if self._on_response is not None and "response" in payload:
            # Before the write: a client that reads the event and at once asks for the
            # response must find it.
            self._on_response(event_type, payload["response"])
        data = {"type": event_type, "sequence_number": sequence_number, **payload}
        await self._response.write(head + b"data: " + orjson.dumps(data) + b"\n\n")


def _drop(request: web.Request) -> bool:
    """Drop the connection so the client sees a reset instead of a (complete) response."""
    if request.transport is not None:
        request.transport.abort()
    return False


async def _fail(writer: EventWriter, shell: ResponseShell, reply: Reply, partial: str) -> None:
    """OpenAI's mid-stream failure: an ``error`` event, its fields nested under ``error`` as
    the live API sends them (the openai client raises ``APIError`` on it), then
    ``response.failed`` with the response's error and no usage."""
    await writer.send(
        "error",
        {
            "error": {
                "type": "server_error",
                "code": "server_error",
                "message": _SERVER_ERROR_MESSAGE,
                "param": None,
            }
        },
    )
    item = message_item(shell.message_id, "incomplete", [output_text_part(partial)])
    error = {"code": "server_error", "message": _SERVER_ERROR_MESSAGE}
    output = shell.output(reply, item)
    await writer.send(
        "response.failed", {"response": shell.document("failed", output=output, error=error)}
    )


async def _fail_first(writer: EventWriter, status: int) -> None:
    """The provider's failure before its answer began (the ``error_first`` fault): an
    ``error`` event of that status's error as the stream's only event, its fields nested
    under ``error`` as ``_fail``'s; no ``response.failed``, as no response was created."""
    fields = fault_error_fields(status)
    error = {**fields, "code": fields["code"] or fields["type"]}
    await writer.send("error", {"error": error})


async def _stream_tool_calls(writer: EventWriter, shell: ResponseShell, reply: Reply) -> int:
    """Show each built-in tool call as OpenAI streams it; the message's ``output_index``."""
    calls = shell.tool_calls(reply)
    for index, (tool, item_id) in enumerate(calls):
        added = tool_call_item(tool, item_id, "in_progress")
        await writer.send("response.output_item.added", {"output_index": index, "item": added})
        for step in ("in_progress", "searching", "completed"):
            progress = {"output_index": index, "item_id": item_id}
            await writer.send(f"response.{added['type']}.{step}", progress)
        done = tool_call_item(tool, item_id, "completed")
        await writer.send("response.output_item.done", {"output_index": index, "item": done})
    if shell.req.image_tool is None:
        return len(calls)
    index = len(calls)
    item_id = shell.image_call_id
    added = shell.image_call("in_progress")
    await writer.send("response.output_item.added", {"output_index": index, "item": added})
    for step in ("in_progress", "generating", "completed"):
        progress = {"output_index": index, "item_id": item_id}
        await writer.send(f"response.image_generation_call.{step}", progress)
    done = shell.image_call("completed")
    await writer.send("response.output_item.done", {"output_index": index, "item": done})
    return index + 1


async def _stream_reply(
    request: web.Request, writer: EventWriter, shell: ResponseShell, reply: Reply, fault: Fault
) -> bool:
    """Send the reply's events; False when a fault dropped the connection instead."""
    if fault.error_first is not None:
        await _fail_first(writer, fault.error_first)
        return True
    first_status = "queued" if shell.req.background else "in_progress"
    await writer.send("response.created", {"response": shell.document(first_status)})
    await writer.send("response.in_progress", {"response": shell.document("in_progress")})
    index = await _stream_tool_calls(writer, shell, reply)
    ids = {"item_id": shell.message_id, "output_index": index, "content_index": 0}
    await writer.send(
        "response.output_item.added",
        {"output_index": index, "item": message_item(shell.message_id, "in_progress", [])},
    )
    await writer.send("response.content_part.added", {**ids, "part": output_text_part("")})
    for sent, piece in enumerate(reply.pieces):
        if sent == fault.reset_after:
            return _drop(request)
        if sent == fault.error_after:
            await _fail(writer, shell, reply, "".join(reply.pieces[:sent]))
            return True
        await writer.send("response.output_text.delta", {**ids, "delta": piece, "logprobs": []})
    if fault.reset_after is not None:
        return _drop(request)  # fewer pieces than reset_after: the stream must still never end
    if fault.error_after is not None:
        await _fail(writer, shell, reply, reply.text)  # fewer pieces: the stream must still fail
        return True
    text = reply.text
    await writer.send("response.output_text.done", {**ids, "text": text, "logprobs": []})
    await writer.send("response.content_part.done", {**ids, "part": output_text_part(text)})
    item = message_item(shell.message_id, reply.status, [output_text_part(text)])
    await writer.send("response.output_item.done", {"output_index": index, "item": item})
    final = shell.finished(reply, with_usage=not fault.no_usage)
    await writer.send(f"response.{reply.status}", {"response": final})
    return True


# --- The endpoint --------------------------------------------------------------------------------


class ResponsesEndpoint:
    """``POST .../responses``; one instance per mock application.

    Faults (``x-mock-fault``) as chat completions take them: ``status`` (OpenAI's error
    bodies), ``delay``, ``reset_after`` (streams: the connection dropped after that many
    text deltas; JSON: at once), ``error_after`` (streams: the failure events after that many
    deltas), ``error_first`` (streams: an ``error`` event of that status before
    ``response.created``, and nothing else), ``garbage``, ``chunks``, ``interval``,
    ``cached`` and ``no_usage`` (the final response's ``usage`` is null).

    Responses with ``store`` not false are kept in ``store`` as the client received them (see
    ``responses_store``); a body that is not JSON (``garbage``) or a dropped connection
    delivered nothing to keep.
    """

    def __init__(
        self, *, chunk_delay_s: float, default_fault: Fault, store: ResponseStore | None = None
    ) -> None:
        self._chunk_delay_s = chunk_delay_s
        self._default_fault = default_fault
        self._store = store if store is not None else ResponseStore()
        self._ids = itertools.count(1)

    def _shell(self, req: ResponsesRequest) -> ResponseShell:
        n = next(self._ids)
        return ResponseShell(req, f"resp_mock_{n}", f"msg_mock_{n}", int(time.time()))

    def _keep(self, shell: ResponseShell, document: dict[str, Any]) -> None:
        if shell.req.store:
            self._store.keep(document, listed_input_items(shell.req.input, shell.response_id))

    def _stream_keeper(self, shell: ResponseShell) -> ResponseListener:
        """Keeps a stream's response once it ends, and a background one from its start
        (queued), as OpenAI keeps it while it runs."""

        def keep(event_type: str, document: dict[str, Any]) -> None:
            started = event_type == "response.created" and shell.req.background
            if started or event_type in TERMINAL_EVENTS:
                self._keep(shell, document)

        return keep

    async def create(self, request: web.Request, body: Body) -> web.StreamResponse:
        fault = await precheck(request, self._default_fault)
        if isinstance(fault, web.Response):
            return fault
        try:
            req = parse_responses_request(body)
            scripted = scripted_pieces(request.headers)
            tool_calls = tool_calls_asked(request.headers)
        except InvalidRequestError as exc:
            return error_response(400, exc.message, param=exc.param, code=exc.code)
        except ScriptError as exc:
            return error_response(400, str(exc), param=REPLY_HEADER)
        except ServerToolSpecError as exc:
            return error_response(400, str(exc))
        reply = build_reply(req, fault, scripted, stored_context_tokens(self._store, req))
        reply = replace(reply, tool_calls=tool_calls)
        shell = self._shell(req)
        if req.stream:
            return await self._stream(request, shell, reply, fault)
        if fault.reset_after is not None:
            _drop(request)
            # aiohttp still wants a response; sending it fails quietly on the closed transport.
            return web.Response(status=500)
        if fault.garbage:
            return web.Response(body=_GARBAGE, headers=_JSON_HEADERS)
        if req.background:
            # Accepted for later: nothing is generated yet, so there is nothing to bill.
            document = shell.document("queued")
        else:
            document = shell.finished(reply, with_usage=not fault.no_usage)
        self._keep(shell, document)
        return web.Response(body=orjson.dumps(document), headers=_JSON_HEADERS)

    async def _stream(
        self, request: web.Request, shell: ResponseShell, reply: Reply, fault: Fault
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        interval = self._chunk_delay_s if fault.interval_s is None else fault.interval_s
        writer = EventWriter(
            response,
            interval,
            fault.garbage,
            self._stream_keeper(shell),
            first_delay_s=fault.first_chunk_delay_s,
        )
        try:
            if await _stream_reply(request, writer, shell, reply, fault):
                # No [DONE]: the Responses API ends a stream with its last event.
                await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream; nothing left to tell it
        return response

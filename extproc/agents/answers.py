"""Readers of upstream answers, JSON or SSE: find the answers to watched requests by id.

A *watch* receives the JSON-RPC answer to one request and may replace it (tool
lists are filtered, agent cards rewritten) or only record what it says (a tool
call's outcome, an A2A task's id and state). While a watch that rewrites is
waiting, the reader holds the bytes back, so a client never sees the original;
once it has its answer the rest streams through, an SSE stream event by whole
event, each read so that a second answer to the same request (a broken server
answering twice) is rewritten too. A reader never holds
more than ``MAX_HELD_BYTES``: past that, a rewriting watch fails closed (its
request gets a JSON-RPC error) and an observing one gives up. So does a rewriting
watch when a message the reader holds cannot be parsed (a UTF-8 BOM, a lone
surrogate escape): another parser may read it, unfiltered. Failing closed is
recorded on the call, for the log line.

Any answer on a server whose tools rules hide may also carry a stray tool list (the
answer to a ``tools/list`` the client sent in another request): with ``strays``, the
reader filters those too. It parses only what could name ``tools``, and reads what
orjson refuses as a lax client would (``lenient_json``).

An A2A stream (``message/stream``, ``SubscribeToTask``...) ends when its task reaches a
final or interrupted state, or with a message: its watch ``awaits_end`` until then, and
the reader sends it in whole events. A stream that ends before (the agent's connection
closed mid-task, a proxy ending a cut body cleanly) loses its broken last event and ends
with the gateway's JSON-RPC error for the request (``ended_early``): as it came, the
client's SDK took the task's last state for where it stopped, with no error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from extproc.agents import call as outcome
from extproc.agents import lenient_json
from extproc.agents.call import AgentCall
from extproc.agents.jsonrpc import (
    INTERNAL_ERROR,
    RequestId,
    error_object,
    is_response,
    response_id_key,
)
from extproc.agents.sse import EventSplitter, event_data, with_data

MAX_HELD_BYTES = 16 * 1024 * 1024
MAX_CARD_BYTES = 1024 * 1024
UNREADABLE = "the gateway could not read the upstream's answer to filter it"
STREAM_ENDED_EARLY = "the agent's stream ended before it was complete"
_STATE = re.compile(r"^[a-z][a-z-]{0,31}$")
# A2A task states after which the agent sends nothing more for this request.
_SETTLED_STATES = frozenset(
    {"completed", "canceled", "failed", "rejected", "input-required", "auth-required"}
)
# Every state A2A defines (0.3's spelling; 1.0's TASK_STATE_* names read as these): the
# `state` label's values. Any other an agent sends is counted as "other".
TASK_STATES = _SETTLED_STATES | {"submitted", "working", "unknown", "unspecified"}


class Watch(Protocol):
    # None: any answer, whatever its id (an MCP server stream replaying answers).
    request_id: RequestId
    # Replaces the answer (the reader holds bytes back until it comes).
    rewrites: bool
    # Done after the first answer; SSE streams of A2A repeat the id on every event.
    final: bool

    def answer(self, message: dict[str, Any]) -> dict[str, Any] | None: ...


class AnswerReader:
    """One HTTP answer (``feed`` per chunk): the bytes to send instead, or None for unchanged."""

    def __init__(
        self,
        watches: list[Watch],
        *,
        sse: bool,
        any_answer: Watch | None = None,
        call: AgentCall | None = None,
        strays: ToolListFilter | None = None,
        sole: bool = False,
        one_request: bool = False,
    ) -> None:
        self._watches = {response_id_key(w.request_id): w for w in watches}
        # The body held one request and the answer is its alone (A2A, which takes no
        # batches): every JSON-RPC answer in it is that request's, whatever its id says.
        self._sole = sole
        # The body held one request: an error under the id null is its error (JSON-RPC
        # answers so when the server could not read the id, and there was one to read).
        self._one_request = one_request
        # Rewriting watches already answered, by id: a server that answers a request
        # twice gets its second copy rewritten too, never passed on as it came.
        self._answered: dict[str, Watch] = {}
        # A tool list of this answer's requests (else ``strays``, the caller's filter for
        # an answer that should hold no list, a tool call's): any tool-list-shaped answer
        # under an id no request has is filtered like it, before the list came and after.
        self._lists = next((w for w in watches if isinstance(w, ToolListFilter)), strays)
        self._any = any_answer
        self._sse = sse
        self._call = call
        self._splitter = EventSplitter()
        self._body = bytearray()
        # Only strays to filter: nothing fails closed for them (the answers of this
        # body's own requests are not lists), so an answer too large to hold passes unread.
        self._strays_only = not self._rewrite_pending() and self._lists is not None
        self._holding = self._rewrite_pending() or self._strays_only
        self._dropping = False
        # An answer the reader had to rewrite was replaced by a JSON-RPC error.
        self.failed = False
        # An A2A stream is sent in whole events until its task settles, so that one cut
        # short ends with the gateway's error after its last whole event.
        self._whole_events = sse and self._awaiting_end()
        # The stream ended before its task settled (the gateway's error ended it).
        self.ended_early = False

    @property
    def settled(self) -> bool:
        """Every watched answer is in: what follows is the end of the stream."""
        return not self._watches and self._any is None

    @property
    def awaiting_end(self) -> bool:
        """A stream whose end a watch still awaits (an A2A task not settled yet): one
        whose client leaves now leaves before its answer."""
        return self._awaiting_end()

    def _awaiting_end(self) -> bool:
        """A stream whose end a watch still awaits (an A2A task not settled yet)."""
        return any(getattr(watch, "awaits_end", False) for watch in self._watches.values())

    def _rewrite_pending(self) -> bool:
        if self._any is not None and self._any.rewrites:
            return True
        return any(watch.rewrites for watch in self._watches.values())

    def _guarding(self) -> bool:
        """Whether what comes may need rewriting: an answer still to rewrite, or a second
        answer to a request whose first one was rewritten. Then SSE events go out one
        whole event at a time, each read first (a partial one is held back)."""
        return self._rewrite_pending() or bool(self._answered) or self._strays_only

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if self._dropping:
            return b""
        if not self._watches and not self._holding and self._any is None:
            return None  # nothing left to read or rewrite: the rest passes as it comes
        if self._sse:
            return self._feed_sse(chunk, end_of_stream)
        return self._feed_json(chunk, end_of_stream)

    # --- JSON ------------------------------------------------------------------------

    def _feed_json(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if len(self._body) + len(chunk) > MAX_HELD_BYTES:
            if self._strays_only and self._holding:
                return self._pass_unread(bytes(self._body) + chunk)
            return self._too_large()
        self._body += chunk
        if not end_of_stream:
            return b"" if self._holding else None
        document = bytes(self._body)
        try:
            replaced = self._read_document(document)
        except ValueError:
            if self._strays_only and self._holding:
                return self._unreadable_document()
            replaced = None
        if not self._holding:
            return None
        if replaced is None and self._rewrite_pending():
            return self._failure_body()  # the answer was not there or not readable
        return replaced if replaced is not None else document

    def _read_document(self, data: bytes) -> bytes | None:
        """The document with its watched answers replaced; None if unchanged. Raises
        ``ValueError`` when it is not JSON the gateway can read."""
        if self._strays_only and not self._watches and not lenient_json.may_hold_tools(data):
            return None  # only strays to look for, and no tool list can be in it
        dumps: Callable[[Any], bytes] = orjson.dumps
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            if not self._strays_only:
                raise  # a list the body asked for: failed closed by the caller
            # Read as a lax client would (a BOM, a lone surrogate): a list in it is
            # filtered, and a tool's result orjson refuses still reaches the client.
            parsed = lenient_json.loads(data)
            dumps = lenient_json.dumps
        batch = isinstance(parsed, list)
        messages: list[Any] = parsed if batch else [parsed]
        changed = False
        for index, message in enumerate(messages):
            replaced = self._read_message(message)
            if replaced is not None:
                messages[index] = replaced
                changed = True
        if not changed:
            return None
        return dumps(messages if batch else messages[0])

    def _read_message(self, message: Any) -> dict[str, Any] | None:
        if _is_answer(message) and (
            self._sole or (self._one_request and _is_null_id_error(message))
        ):
            return self._read_sole_answer(message)
        if not is_response(message):
            # Not an answer to JSON-RPC, but one to a Go client, which reads "ID" and
            # "Result" as "id" and "result": a tool list in it is filtered all the same.
            lists = self._lists if self._lists is not None else self._any
            if isinstance(message, dict) and isinstance(lists, ToolListFilter):
                return lists.filter_stray(message)
            return None
        key = response_id_key(message["id"])
        watch = self._watches.get(key)
        if watch is None:
            if self._any is not None:
                return self._any.answer(message)
            again = self._answered.get(key)
            if again is not None:
                return again.answer(message)
            # An answer under an id no request of this body has, in the answer to a
            # tool list: the server read the id another way than the gateway. Never let
            # it pass as it came: filter it like the list it may be.
            return self._lists.filter_stray(message) if self._lists is not None else None
        return self._answer_by(key, watch, message)

    def _read_sole_answer(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The answer to the body's one request, whatever id it carries.

        A2A's SDK reads an answer's ``result`` or ``error`` without looking at its id:
        the HTTP answer is the request's. An agent that answers under another id (its
        own number for the client's string, null on an error, none at all) works for
        the client; matched by id, its task went unseen, a stream that settled ended
        with the gateway's "ended before it was complete" error (which the SDK raises
        after the task completed), and an extended card failed closed.

        On MCP only an error under the id null is read so (a result under another id
        may be the answer to another request of the client's, a stray list): matched by
        id, a tool call's error was logged ``forwarded``, and a tool list's error (a
        session the server no longer knows) was replaced by the gateway's "could not
        read the upstream's answer", the server's reason lost."""
        if self._watches:
            key, watch = next(iter(self._watches.items()))
            return self._answer_by(key, watch, message)
        again = next(iter(self._answered.values()), None)
        return again.answer(message) if again is not None else None

    def _answer_by(self, key: str, watch: Watch, message: dict[str, Any]) -> dict[str, Any] | None:
        """``watch`` reads ``message``; once it has its final answer it stops awaiting one,
        and one that rewrites answers stays to rewrite the same answer sent again."""
        replaced = watch.answer(message)
        if watch.final:
            del self._watches[key]
            if watch.rewrites:
                self._answered[key] = watch
        return replaced

    # --- SSE -------------------------------------------------------------------------

    def _feed_sse(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        events = self._splitter.feed(chunk)
        rest = b""
        if end_of_stream:
            rest = self._splitter.flush()
            if rest:
                events.append(rest)
        if len(self._splitter.pending) > MAX_HELD_BYTES:
            if self._strays_only and self._holding:
                # The whole events read first, then what is held: nothing is sent twice.
                read = [self._read_event(event) or event for event in events]
                return self._pass_unread(b"".join(read) + self._splitter.pending)
            if self._holding:
                return self._too_large()
            self._watches.clear()  # an answer too large to read: pass it on unread
            self._any = None
            if self._whole_events:
                # What was held of it goes out first (its earlier whole events had).
                self._whole_events = False
                return b"".join(events) + self._splitter.pending
            return None
        if not self._holding:
            if self._whole_events:
                return self._whole(chunk, events, rest, end_of_stream)
            for event in events:
                self._read_event(event)
            return None
        out: list[bytes] = []
        for event in events:
            out.append(self._read_event(event) or event)
            if self._dropping:
                return b"".join(out)  # an unreadable answer: the rest of the stream goes nowhere
        if end_of_stream and any(watch.rewrites for watch in self._watches.values()):
            # The answer to rewrite never came (or not under its request's id): what
            # was held goes nowhere, as on the JSON path, rather than out unfiltered.
            # (A server stream's last events were all read and filtered: they go out.)
            return self._failure_body()
        if not self._guarding():
            # Released: what was held goes out; the splitter keeps the partial event
            # only to read it, it is never sent twice.
            self._holding = False
            out.append(self._splitter.pending)
        return b"".join(out)

    def _whole(
        self, chunk: bytes, events: list[bytes], rest: bytes, end_of_stream: bool
    ) -> bytes | None:
        """Whole events of a stream whose end is awaited, each read; a partial one waits for
        its end in the next chunk. At the end, what is left without its blank line
        (``rest``, the last of ``events``) is dropped if it was cut inside (an SSE client
        drops it, or misreads it once the gateway's error follows); one whose data is
        whole is read and goes with its blank line. A stream still awaiting its end then
        gets the gateway's error."""
        out: list[bytes] = []
        for event in events:
            if rest and event is rest:
                data = event_data(event)
                if data is None or not _parses(data):
                    continue
                event = event.rstrip(b"\r\n") + b"\n\n"
            out.append(self._read_event(event) or event)
        if end_of_stream and self._awaiting_end():
            out.append(self._ended_early())
        elif not self._awaiting_end():
            # Settled: what is held goes out, and the rest passes as it comes.
            self._whole_events = False
            out.append(self._splitter.pending)
        sent = b"".join(out)
        return None if sent == chunk else sent

    def _ended_early(self) -> bytes:
        """The JSON-RPC error ending a stream cut before its task settled."""
        ids = [w.request_id for w in self._watches.values() if getattr(w, "awaits_end", False)]
        self._watches.clear()
        self.ended_early = True
        if self._call is not None:
            self._call.answered(outcome.UPSTREAM_ERROR, INTERNAL_ERROR)
        data = {"type": "upstream_error", "code": "invalid_upstream_response"}
        errors = [error_object(i, INTERNAL_ERROR, STREAM_ENDED_EARLY, data) for i in ids]
        return b"".join(b"data: " + orjson.dumps(error) + b"\n\n" for error in errors)

    def _read_event(self, event: bytes) -> bytes | None:
        data = event_data(event)
        if data is None or not (self._watches or self._any or self._answered or self._strays_only):
            return None
        try:
            replaced = self._read_document(data)
        except ValueError:
            return self._unreadable_event(event, data)
        return with_data(event, replaced) if replaced is not None else None

    def _unreadable_event(self, event: bytes, data: bytes) -> bytes | None:
        """An event whose data the gateway cannot parse, while it may have to rewrite it.

        orjson refuses what other parsers take (a UTF-8 BOM, a lone surrogate escape
        such as ``\\ud800``, which JavaScript and Python read): passed on, such an event
        could be the tool list, unfiltered. A request's answer fails closed as an
        unreadable JSON answer does (its request gets -32603, the rest of the stream is
        dropped); on a server stream, or after the answer it rewrote (a server answering
        twice), the event is replaced by an error without an id and the stream goes
        on, its later lists still filtered. An event without data (a priming event)
        holds no message and passes."""
        if not data.strip() or not self._guarding():
            return None
        if self._any is not None or not self._rewrite_pending():
            # A stream that goes on: a server stream, or answers after the rewritten one
            # (this may be it again). The event becomes an error without an id.
            self._failed()
            return with_data(event, unreadable_answer([None]))
        self._dropping = True
        return self._failure_body()

    def _pass_unread(self, held: bytes) -> bytes:
        """Give up reading an answer too large to hold that only strays were read for:
        what was held goes out, and the rest passes as it comes."""
        self._watches.clear()
        self._lists = None
        self._strays_only = False
        self._holding = False
        return held

    # --- failing closed --------------------------------------------------------------

    def _too_large(self) -> bytes | None:
        if not self._holding:
            self._watches.clear()  # an answer too large to read: passed on unread
            return None
        self._dropping = True
        return self._failure_body()

    def _unreadable_document(self) -> bytes:
        """A JSON answer read only for stray tool lists that no parser the gateway has
        reads, though it may name ``tools``: a lax client's parser might find a list in
        it, unfiltered. Its requests get the JSON-RPC error an unreadable list gets."""
        request_ids = self._call.request_ids if self._call is not None else []
        self._failed()
        self._watches.clear()
        self._holding = False
        return unreadable_answer(request_ids or [None])

    def _failed(self) -> None:
        self.failed = True
        if self._call is not None:
            self._call.answered(outcome.UPSTREAM_ERROR, INTERNAL_ERROR)

    def _failure_body(self) -> bytes:
        rewriting = [watch.request_id for watch in self._watches.values() if watch.rewrites]
        self._failed()
        self._watches.clear()
        self._any = None
        self._holding = False
        if not rewriting:
            return b""  # a stream, not one request's answer: the rest is dropped
        body = unreadable_answer(rewriting)
        return b"data: " + body + b"\n\n" if self._sse else body


def _is_answer(message: Any) -> bool:
    """Whether ``message`` answers a request, an id or not: a ``result`` or an ``error``."""
    return (
        isinstance(message, dict)
        and "method" not in message
        and ("result" in message or "error" in message)
    )


_ERROR_KEYS = frozenset(("jsonrpc", "id", "error"))


def _is_null_id_error(message: dict[str, Any]) -> bool:
    """An error whose id is null: JSON-RPC's answer when the server could not read the id.
    Nothing else in it: a Go client reads ``"ID"`` and ``"Result"`` as ``id`` and
    ``result``, so a message with more keys may be a list for another request, which the
    stray filter must see."""
    return "error" in message and message.get("id", 0) is None and message.keys() <= _ERROR_KEYS


def _parses(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def unreadable_answer(request_ids: list[RequestId]) -> bytes:
    """The JSON-RPC error for requests whose answer the gateway had to rewrite but could
    not read: the client gets this instead of, say, an unfiltered tool list."""
    errors = [error_object(request_id, INTERNAL_ERROR, UNREADABLE) for request_id in request_ids]
    return orjson.dumps(errors[0] if len(errors) == 1 else errors)


# --- watches -----------------------------------------------------------------------------


class ToolListFilter:
    """``tools/list``: keep the tools the caller may call; the list is the caller's own.

    With no ``request_id`` it filters any answer shaped like a tool list: on an MCP
    server stream, where a resumed stream replays the answers of earlier requests.
    """

    rewrites = True

    def __init__(
        self, request_id: RequestId, call: AgentCall, allowed: Callable[[str], bool]
    ) -> None:
        self.request_id = request_id
        # As a request's watch, done with its answer (an id of null included). As a
        # server stream's reader of any answer it is never consumed: `final` is unread.
        self.final = True
        self._call = call
        self._allowed = allowed

    def filter_stray(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """A tool-list-shaped answer under an id no request has: filtered, not consumed."""
        lists = _tool_lists(message)
        if not lists:
            return None
        # No answer to the body's requests: the call's outcome stays what their answers said.
        return self._filtered(message, lists, answers_the_call=False)

    def answer(self, message: dict[str, Any]) -> dict[str, Any] | None:
        lists = _tool_lists(message)
        if not lists:
            if "error" in message:
                _record_error(self._call, message)
            return None
        return self._filtered(message, lists, answers_the_call=True)

    def _filtered(
        self, message: dict[str, Any], lists: list[tuple[str, str]], *, answers_the_call: bool
    ) -> dict[str, Any] | None:
        call = self._call
        filtered = dict(message)
        changed = False
        for result_key, tools_key in lists:
            result = filtered[result_key]
            tools = result[tools_key]
            kept = [tool for tool in tools if self._shown(tool)]
            call.tools_listed = (call.tools_listed or 0) + len(kept)
            call.tools_hidden = (call.tools_hidden or 0) + len(tools) - len(kept)
            if len(kept) == len(tools) and result.get("cacheScope", "private") == "private":
                continue
            result = {**result, tools_key: kept}
            if "cacheScope" in result:
                # The list now depends on who asked: no shared cache may serve it to another.
                result["cacheScope"] = "private"
            filtered[result_key] = result
            changed = True
        if answers_the_call:
            call.answered(outcome.OK)
        return filtered if changed else None

    def _shown(self, tool: Any) -> bool:
        """Whether the caller may see ``tool``: it has a ``name`` it may call, and so does
        every other spelling of that key in it (``"Name"``), which a Go client reads,
        the last one winning."""
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            return False
        return all(
            isinstance(name, str) and self._allowed(name)
            for key, name in tool.items()
            if key.casefold() == "name"
        )


def _tool_lists(message: dict[str, Any]) -> list[tuple[str, str]]:
    """Where ``message`` holds a tool list: (result key, tools key) pairs.

    JSON keys are exact, and Python and TypeScript clients read ``result.tools`` only; but
    Go's ``encoding/json`` (mcp-go, the Go MCP SDK before CVE-2026-27896) matches keys
    regardless of case, the long s and the Kelvin sign folded, and keeps the last: to
    such a client ``"Tools"`` or ``"tool\\u017f"`` (under ``"Result"`` too) is the tool list.
    Every spelling is one, filtered."""
    found: list[tuple[str, str]] = []
    for result_key, result in message.items():
        if result_key.casefold() != "result" or not isinstance(result, dict):
            continue
        for tools_key, tools in result.items():
            if tools_key.casefold() == "tools" and isinstance(tools, list):
                found.append((result_key, tools_key))
    return found


class ToolCallOutcome:
    """``tools/call``: ok, the tool's own error (``isError``), a request for the client's
    input first (``input_required``) or a JSON-RPC error."""

    rewrites = False
    final = True

    def __init__(self, request_id: RequestId, call: AgentCall) -> None:
        self.request_id = request_id
        self._call = call

    def answer(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if "error" in message:
            _record_error(self._call, message)
            return None
        result = message.get("result")
        if isinstance(result, dict) and result.get("resultType") == "input_required":
            self._call.answered(outcome.INPUT_REQUIRED)
            return None
        failed = isinstance(result, dict) and result.get("isError") is True
        self._call.answered(outcome.TOOL_ERROR if failed else outcome.OK)
        return None


class TaskWatch:
    """A2A: the task an answer (or each event of a stream) is about, and its latest state.

    ``stream``: the request asked for a stream (``message/stream``, ``SubscribeToTask``),
    which ends only once its task settles; until then the watch ``awaits_end``."""

    rewrites = False

    def __init__(self, request_id: RequestId, call: AgentCall, *, stream: bool = False) -> None:
        self.request_id = request_id
        # Until the task ends or waits for input: a stream repeats the id on each event.
        self.final = False
        self._call = call
        self._stream = stream

    @property
    def awaits_end(self) -> bool:
        return self._stream and not self.final

    def answer(self, message: dict[str, Any]) -> dict[str, Any] | None:
        self.final = True
        if "error" in message:
            _record_error(self._call, message)
            return None
        result = message.get("result")
        if isinstance(result, dict):
            _record_task(self._call, result)
            state = self._call.task_state
            is_message = "message" in result or result.get("kind") == "message"
            self.final = is_message or state in _SETTLED_STATES
        self._call.answered(outcome.OK)
        return None


class ExtendedCardRewrite:
    """A2A's authenticated extended card (a JSON-RPC result): its URLs point at the gateway."""

    rewrites = True
    final = True

    def __init__(self, request_id: RequestId, call: AgentCall) -> None:
        self.request_id = request_id
        self._call = call

    def answer(self, message: dict[str, Any]) -> dict[str, Any] | None:
        result = message.get("result")
        if not isinstance(result, dict):
            _record_error(self._call, message)
            return None
        self._call.answered(outcome.OK)
        card = rewrite_card(result, self._call.server.path, self._call.public_base)
        return {**message, "result": card}


def _record_error(call: AgentCall, message: dict[str, Any]) -> None:
    error = message.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    # JSON's true is no error code (bool is an int subclass): the log line's
    # rpc_error_code is an integer or null.
    valid = isinstance(code, int) and not isinstance(code, bool)
    call.answered(outcome.RPC_ERROR, code if valid else None)


def _record_task(call: AgentCall, result: dict[str, Any]) -> None:
    found: dict[str, Any] = result
    # A2A 1.0 wraps each answer or event ({"task": ...}, {"statusUpdate": ...});
    # 0.3 sends the object itself with a `kind`.
    for key in ("task", "statusUpdate", "artifactUpdate", "message"):
        inner = result.get(key)
        if isinstance(inner, dict):
            found = inner
            break
    status = found.get("status")
    task_id = found.get("taskId")
    if not isinstance(task_id, str) and isinstance(status, dict):
        task_id = found.get("id")  # a task object names itself by `id`
    if isinstance(task_id, str):
        call.task_id = task_id[:128]
    context_id = found.get("contextId")
    if isinstance(context_id, str):
        call.context_id = context_id[:128]
    if isinstance(status, dict) and isinstance(status.get("state"), str):
        call.task_state = normalize_state(status["state"])


def normalize_state(state: str) -> str:
    """One spelling for A2A 0.3 and 1.0: ``TASK_STATE_INPUT_REQUIRED`` -> ``input-required``."""
    name = state.removeprefix("TASK_STATE_").lower().replace("_", "-")
    return name if _STATE.match(name) else "other"


# --- agent cards ---------------------------------------------------------------------------


class CardReader:
    """``GET .../.well-known/agent-card.json``: the card, its URLs pointed at the gateway."""

    def __init__(self, call: AgentCall) -> None:
        self._call = call
        self._body = bytearray()
        self._given_up = False

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if self._given_up:
            return None
        self._body += chunk
        if len(self._body) > MAX_CARD_BYTES:
            # Not a card the gateway can read: what was held goes out as it came.
            self._given_up = True
            return bytes(self._body)
        if not end_of_stream:
            return b""
        try:
            card = orjson.loads(bytes(self._body))
        except orjson.JSONDecodeError:
            return bytes(self._body)
        if not isinstance(card, dict):
            return bytes(self._body)
        self._call.answered(outcome.OK)
        return orjson.dumps(rewrite_card(card, self._call.server.path, self._call.public_base))


def rewrite_card(card: dict[str, Any], upstream_path: str, public_base: str) -> dict[str, Any]:
    """The card with every JSON-RPC interface URL on the gateway's route; other bindings
    (gRPC, HTTP+JSON) are dropped, since only JSON-RPC goes through the gateway."""

    def moved(url: str) -> str:
        try:
            path = urlsplit(url).path
        except ValueError:
            # Not a URL (``http://[host/``): the route's base, never the agent's own.
            path = ""
        if upstream_path and (path == upstream_path or path.startswith(upstream_path + "/")):
            path = path[len(upstream_path) :]
        return public_base + (path if path.startswith("/") else "/" + path)

    card = dict(card)
    interfaces = card.get("supportedInterfaces")
    if isinstance(interfaces, list):  # A2A 1.0
        card["supportedInterfaces"] = [
            {**item, "url": moved(item["url"])}
            for item in interfaces
            if isinstance(item, dict)
            and isinstance(item.get("url"), str)
            and str(item.get("protocolBinding", "JSONRPC")).upper() == "JSONRPC"
        ]
    if isinstance(card.get("url"), str):  # A2A 0.3
        extra = card.get("additionalInterfaces")
        jsonrpc = [
            item
            for item in (extra if isinstance(extra, list) else [])
            if isinstance(item, dict)
            and isinstance(item.get("url"), str)
            and str(item.get("transport", "")).upper() == "JSONRPC"
        ]
        # `url` is the preferred transport's (JSON-RPC unless the card says otherwise).
        # Another's (a gRPC endpoint) is not where the route's JSON-RPC goes: the card's
        # JSON-RPC interface is, or, if it has none, the route's base.
        if str(card.get("preferredTransport", "JSONRPC")).upper() == "JSONRPC":
            card["url"] = moved(card["url"])
        else:
            card["url"] = moved(jsonrpc[0]["url"] if jsonrpc else "")
            card["preferredTransport"] = "JSONRPC"
        if isinstance(extra, list):
            card["additionalInterfaces"] = [{**item, "url": moved(item["url"])} for item in jsonrpc]
    return card

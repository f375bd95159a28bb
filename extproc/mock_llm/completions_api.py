"""The mock's OpenAI legacy text completions endpoint (``POST .../completions``).

Requests are checked as OpenAI checks the fields the mock relies on: ``model``,
``prompt`` (required: a string, an array of strings, an array of token ids or an array
of non-empty arrays of token ids; an array of strings or id arrays is a batch, one
prompt each), ``suffix`` (a string), ``max_tokens`` (an integer >= 0, 16 by default, as
OpenAI's: 0 scores a prompt, ``echo`` giving it back with nothing generated), ``n`` (an
integer >= 1), ``echo`` and ``stream`` (booleans),
``stream_options.include_usage``. Others (``best_of``, ``logprobs``, ``temperature``,
``stop``...) are accepted and ignored: ``logprobs`` is always null.

Answers are deterministic, by chat's rules (``tokens``): each prompt's reply is ``Mock
reply to: <the prompt's first 200 characters>`` (a prompt of token ids: ``<N token
ids>``), one piece per token, cut to ``max_tokens`` pieces (``finish_reason:
"length"``, else ``"stop"``); ``echo`` puts the prompt in front of it. Every prompt gets
``n`` choices, indexed prompt by prompt (prompt ``i``'s choice ``j`` is ``i * n + j``).

Usage: ``prompt_tokens`` = the sum over prompts of ``tokens.count_tokens`` of the prompt
(the number of ids for token ids) and of the ``suffix``: a completion has no message
overhead; ``completion_tokens`` = the pieces of every choice; ``total_tokens`` their sum.

A stream sends, choice after choice, one ``text_completion`` chunk per piece
(``choices: [{"text", "index", "logprobs": null, "finish_reason": null}]``) and a
finish chunk (``text: ""`` and the reason), then the usage-only chunk (``choices:
[]``) when ``include_usage`` asked for it (every chunk then carries ``"usage": null``,
as OpenAI's), and ``data: [DONE]``. Faults as chat completions take them: ``status``,
``delay``, ``reset_after``, ``error_after`` and ``end_inside`` (counted in text chunks
over the whole stream, a batch's later prompts included), ``error_first`` (the error as
the stream's first event), ``garbage``, ``chunks`` (each reply's pieces), ``interval``,
``cached``, ``no_usage``; and ``x-mock-reply`` scripts every choice's reply.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.faults import Fault
from extproc.mock_llm.openai_api import (
    STREAM_ERROR_EVENT,
    SYSTEM_FINGERPRINT,
    InvalidRequestError,
    error_response,
    first_error_event,
    json_request,
    optional_positive_int,
    precheck,
)
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.scripted import REPLY_HEADER, ScriptError, scripted_pieces
from extproc.mock_llm.tokens import count_tokens, reply_pieces

# OpenAI's default for a completion's max_tokens.
DEFAULT_MAX_TOKENS = 16

_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_SSE_DONE = b"data: [DONE]\n\n"
_GARBAGE = b'{"id": "cmpl-garbage", this is not json'


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt of a request: its text, or its token ids."""

    text: str | None
    token_ids: tuple[int, ...] = ()

    @property
    def tokens(self) -> int:
        return count_tokens(self.text) if self.text is not None else len(self.token_ids)

    @property
    def quoted(self) -> str:
        """What the reply quotes: the text, or what stands in for token ids."""
        return self.text if self.text is not None else f"<{len(self.token_ids)} token ids>"


@dataclass(frozen=True, slots=True)
class CompletionsRequest:
    model: str
    prompts: list[Prompt]
    suffix: str
    max_tokens: int
    n: int
    echo: bool
    stream: bool
    include_usage: bool


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    prefix: str  # the echoed prompt, sent before the pieces ("" without echo)
    pieces: list[str]
    finish_reason: str

    @property
    def text(self) -> str:
        return self.prefix + "".join(self.pieces)


def _token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _prompts(value: Any) -> list[Prompt]:
    """The prompts of ``prompt`` in any of its four shapes; a 400 for anything else."""
    if isinstance(value, str):
        return [Prompt(value)]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return [Prompt(item) for item in value]
        if all(_token_id(item) for item in value):
            return [Prompt(None, tuple(value))]
        if all(
            isinstance(item, list) and item and all(_token_id(t) for t in item) for item in value
        ):
            return [Prompt(None, tuple(item)) for item in value]
    if value is None:
        raise InvalidRequestError(
            "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
        )
    raise InvalidRequestError(
        "Invalid 'prompt': expected a string, an array of strings, an array of token ids "
        "or an array of arrays of token ids.",
        "prompt",
        "invalid_type",
    )


def _max_tokens(doc: dict[str, Any]) -> int:
    value = doc.get("max_tokens")
    if value is None:
        return DEFAULT_MAX_TOKENS
    # OpenAI's minimum is 0 (a prompt scored); bool is an int subclass, and true is no 1.
    if not _token_id(value):
        raise InvalidRequestError(
            f"Invalid 'max_tokens': expected an integer >= 0, got {value!r}.",
            "max_tokens",
            "invalid_value",
        )
    return int(value)


def _flag(doc: dict[str, Any], name: str) -> bool:
    value = doc.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequestError(f"Invalid '{name}': expected a boolean.", name, "invalid_type")
    return bool(value)


def parse_completions_request(body: Body) -> CompletionsRequest:
    """Validate the fields the mock relies on; everything else is accepted and ignored."""
    doc, model = json_request(body)
    suffix = doc.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise InvalidRequestError("Invalid 'suffix': expected a string.", "suffix", "invalid_type")
    options = doc.get("stream_options")
    return CompletionsRequest(
        model=model,
        prompts=_prompts(doc.get("prompt")),
        suffix=suffix or "",
        max_tokens=_max_tokens(doc),
        n=optional_positive_int(doc, "n") or 1,
        echo=_flag(doc, "echo"),
        stream=_flag(doc, "stream"),
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
    )


def build_choices(
    req: CompletionsRequest, fault: Fault, scripted: list[str] | None
) -> list[Choice]:
    """Every choice of the answer, prompt by prompt, ``n`` each."""
    choices: list[Choice] = []
    for prompt in req.prompts:
        if scripted is not None:
            pieces, cut = scripted[: req.max_tokens], len(scripted) > req.max_tokens
        else:
            user = [{"role": "user", "content": prompt.quoted}]
            pieces, cut = reply_pieces(user, max_tokens=req.max_tokens, chunks=fault.chunks)
        prefix = prompt.quoted if req.echo else ""
        for _ in range(req.n):
            reason = "length" if cut else "stop"
            choices.append(Choice(len(choices), prefix, pieces, reason))
    return choices


def usage_of(req: CompletionsRequest, choices: list[Choice], fault: Fault) -> dict[str, Any]:
    prompt = sum(p.tokens + count_tokens(req.suffix) for p in req.prompts)
    completion = sum(len(choice.pieces) for choice in choices)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    cached = fault.cached_part(prompt)
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def _drop(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Drop the connection so the client sees a reset instead of a (complete) answer."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp still wants a response object; finishing it fails quietly on the closed transport.
    return response if response is not None else web.Response(status=500)


class CompletionsEndpoint:
    """``POST .../completions``; one instance per mock application."""

    def __init__(self, *, chunk_delay_s: float, default_fault: Fault) -> None:
        self._chunk_delay_s = chunk_delay_s
        self._default_fault = default_fault
        self._ids = itertools.count(1)

    async def create(self, request: web.Request, body: Body) -> web.StreamResponse:
        fault = await precheck(request, self._default_fault)
        if isinstance(fault, web.Response):
            return fault
        try:
            req = parse_completions_request(body)
            scripted = scripted_pieces(request.headers)
        except InvalidRequestError as exc:
            return error_response(400, exc.message, param=exc.param, code=exc.code)
        except ScriptError as exc:
            return error_response(400, str(exc), param=REPLY_HEADER)
        choices = build_choices(req, fault, scripted)
        usage = usage_of(req, choices, fault)
        completion_id = f"cmpl-mock-{next(self._ids)}"
        if req.stream:
            return await self._stream(request, req, completion_id, choices, usage, fault)
        if fault.reset_after is not None:
            return _drop(request)
        if fault.garbage:
            return web.Response(body=_GARBAGE, headers=_JSON_HEADERS)
        document: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [
                {
                    "text": choice.text,
                    "index": choice.index,
                    "logprobs": None,
                    "finish_reason": choice.finish_reason,
                }
                for choice in choices
            ],
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if not fault.no_usage:
            document["usage"] = usage
        return web.Response(body=orjson.dumps(document), headers=_JSON_HEADERS)

    async def _stream(
        self,
        request: web.Request,
        req: CompletionsRequest,
        completion_id: str,
        choices: list[Choice],
        usage: dict[str, Any],
        fault: Fault,
    ) -> web.StreamResponse:
        created = int(time.time())
        with_usage = req.include_usage and not fault.no_usage

        def event(listed: list[dict[str, Any]], report: dict[str, Any] | None = None) -> bytes:
            if fault.garbage:
                return b"data: {this is not json\n\n"
            chunk: dict[str, Any] = {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "choices": listed,
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
            if with_usage:
                chunk["usage"] = report
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        def text(index: int, piece: str, reason: str | None = None) -> list[dict[str, Any]]:
            return [{"text": piece, "index": index, "logprobs": None, "finish_reason": reason}]

        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        interval = self._chunk_delay_s if fault.interval_s is None else fault.interval_s
        writes = 0

        async def send(data: bytes) -> None:
            nonlocal writes
            pause = fault.pause_before_event(writes, interval)
            if pause:
                await asyncio.sleep(pause)
            writes += 1
            await response.write(data)

        sent = 0
        try:
            if fault.error_first is not None:
                await send(first_error_event(fault.error_first))
                await response.write_eof()
                return response
            for choice in choices:
                pieces = [choice.prefix, *choice.pieces] if choice.prefix else choice.pieces
                for piece in pieces:
                    if sent == fault.reset_after:
                        return _drop(request, response)
                    if sent == fault.error_after:
                        await send(STREAM_ERROR_EVENT)
                        await response.write_eof()
                        return response
                    content = event(text(choice.index, piece))
                    if sent == fault.end_inside:
                        # The first half of the event, then the body's clean end (aiohttp
                        # ends it when the handler returns): a reset mid-line behind a proxy.
                        await send(content[: len(content) // 2])
                        return response
                    await send(content)
                    sent += 1
                finish = event(text(choice.index, "", choice.finish_reason))
                if fault.end_inside is not None and choice is choices[-1]:
                    # Fewer pieces than end_inside: the stream must still end inside an
                    # event, the last choice's finish.
                    await send(finish[: len(finish) // 2])
                    return response
                await send(finish)
            if fault.reset_after is not None:
                return _drop(request, response)  # fewer pieces: the stream still never ends
            if fault.error_after is not None:
                await send(STREAM_ERROR_EVENT)  # fewer pieces: the stream still fails
                await response.write_eof()
                return response
            if with_usage:
                await send(event([], usage))
            await send(_SSE_DONE)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream; nothing left to tell it
        return response

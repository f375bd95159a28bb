"""The one generic processor: drives the ordered stages through an ext_proc stream.

Envoy opens one gRPC stream per HTTP request and sends up to four messages
(request headers, request body, response headers, response body chunks). For
each, the processor calls the matching hook of every stage that has one, in
order, with a fresh ``PhaseOutput``, and answers Envoy with what they wrote.
A hook returns None, or an awaitable when it has to wait, so the common
synchronous path makes no coroutine. A hook stops the request by raising
``GatewayError`` (answered as an OpenAI error) or by setting ``out.answer``
(the gateway answers the client itself). When the stream ends, however it
ends, every stage's ``done`` hook runs exactly once, after Envoy has its last
answer; ``done`` hooks never wait. A stage whose ``done`` needs a fact only the store
holds (which failover attempt was in flight when the client hung up) has a ``closing``
hook, called first: it returns None, or an awaitable that the processor awaits in a
task of its own (the stream is gone, and nothing waits for it), running the ``done``
hooks after it. The runtime counts that task as a stream, so a stopping gateway waits
for its log line, usage and settlement as it does for a stream's.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import envoy_messages
from extproc.answer_encoding import decoded_opening, sniffed_encoding
from extproc.backends import ENVOY_UPSTREAM_TIME, SSE
from extproc.context import BodyHints, PhaseOutput, RequestContext
from extproc.credential_cleaner import hide_in_error
from extproc.envoy_failover import ATTEMPT_METADATA
from extproc.envoy_replies import RESPONSE_DETAILS_ATTRIBUTE, VIA_UPSTREAM
from extproc.envoy_request_record import recorded_request
from extproc.errors import GatewayError
from extproc.headers import BODY_HINTS_NAMESPACE
from extproc.runtime import Runtime
from extproc.stages.model_credentials import redact_unread_path
from extproc.telemetry.span_attributes import request_metadata
from extproc.telemetry.trace_context import parse_traceparent

log = logging.getLogger(__name__)

PHASES = ("request_headers", "request_body", "response_headers", "response_body")
# Where Envoy puts the attributes the filter's config asks for.
ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"
JSON = "application/json"
# How an event stream's first line opens (the SSE spec's fields, or a comment).
_EVENT_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")


class Processor:
    def __init__(
        self,
        runtime: Callable[[], Runtime],
        stages: Sequence[object],
        attempt_stages: Sequence[object] = (),
    ) -> None:
        self._runtime = runtime
        self._hooks = _hooks_of(stages)
        # Streams of the per-attempt (upstream) filter, used by failover.
        self._attempt_hooks = _hooks_of(attempt_stages)
        self._serves_attempts = bool(attempt_stages)
        self._done_hooks: list[Callable[[RequestContext], None]] = [
            getattr(stage, "done")  # noqa: B009 - stages are plain objects
            for stage in stages
            if hasattr(stage, "done")
        ]
        self._closing_hooks: list[Callable[[RequestContext], Awaitable[None] | None]] = [
            getattr(stage, "closing")  # noqa: B009 - stages are plain objects
            for stage in stages
            if hasattr(stage, "closing")
        ]
        # The requests whose done hooks wait for a closing hook (held until they ran).
        self._closing: set[asyncio.Task[None]] = set()
        for hook in self._done_hooks:
            if inspect.iscoroutinefunction(hook):
                raise TypeError(f"{hook.__qualname__} must be a plain function: done() never waits")

    async def process(
        self, requests: AsyncIterator[ext.ProcessingRequest], context: Any = None
    ) -> AsyncIterator[ext.ProcessingResponse]:
        """Serve one ext_proc stream, i.e. one HTTP request (the gRPC ``Process`` method)."""
        ctx = RequestContext(runtime=self._runtime())
        hooks = self._hooks
        # Read once: grpc.aio builds the tuple anew on each call (about 3 us).
        metadata = (context.invocation_metadata() or ()) if context is not None else ()
        attempt = self._serves_attempts and _is_attempt(metadata)
        if attempt:
            hooks = self._attempt_hooks
        if context is not None:
            ctx.trace_id = trace_id_of(metadata)
        if not attempt:
            # Down again in _finish, once the request is counted (an attempt is a part
            # of its request, not one more).
            ctx.runtime.services.metrics.requests_in_progress.inc()
        try:
            async for request in requests:
                phase = request.WhichOneof("request")
                if phase is None:
                    continue
                if phase not in hooks:
                    # Trailers: no stage reads them, but Envoy waits for an answer to
                    # every message it sends (message_timeout, then a 504).
                    yield envoy_messages.continue_response(phase)
                    continue
                out = PhaseOutput()
                ctx.phase_started = time.monotonic()
                try:
                    if ctx.lean_response and phase == "response_body" and ctx.first_byte_at is None:
                        # No headers message on the lean path: the stages see the
                        # response headers they need (the status) from the first chunk.
                        found = lean_response_headers(request, ctx.stream)
                        for hook in hooks["response_headers"]:
                            pending = hook(ctx, PhaseOutput(), found)
                            if pending is not None:
                                await pending
                    args = _arguments(ctx, phase, request)
                    for hook in hooks[phase]:
                        # A hook returns None when done, or an awaitable when it
                        # must wait (a store call, a first JWT verification).
                        pending = hook(ctx, out, *args)
                        if pending is not None:
                            await pending
                        if out.answer is not None:
                            break
                    if phase == "request_headers" and _no_body_to_come(ctx, request, out):
                        await _read_empty_body(ctx, hooks["request_body"], out)
                    elif phase == "response_headers" and _no_answer_to_come(ctx, request, out):
                        await _read_empty_body(ctx, hooks["response_body"], out, True)
                except Exception as exc:
                    error = exc if isinstance(exc, GatewayError) else _internal_error(ctx, phase)
                    hide_in_error(ctx, error)
                    ctx.error = error
                    ctx.response_status = error.status
                    # Before the metadata below names the path to Envoy's records.
                    redact_unread_path(ctx)
                    answer = envoy_messages.error_response(error, ctx.request_id, ctx.error_shape)
                    # Envoy's access log and span see who was refused, and why. Not from
                    # an attempt: its filter writes into the request's metadata (to name
                    # the attempt, envoy_failover), and its own view of the request (a
                    # route of its own, no caller) is not the request's.
                    if not attempt:
                        _add_request_metadata(ctx, phase, answer)
                    yield answer
                    return
                if out.answer is not None:
                    status, body, answer_headers = out.answer
                    ctx.response_status = status
                    ctx.completed = True
                    answer = envoy_messages.immediate_response(status, body, answer_headers)
                    if not attempt:
                        _add_request_metadata(ctx, phase, answer)
                    yield answer
                    return
                if out.reset is not None:
                    # The stages recorded the failure (the log line, the usage): the
                    # client's response, its status perhaps gone, fails.
                    if phase == "response_headers":
                        # A bodiless answer, read in its headers' phase: Envoy still holds
                        # them, so the client gets this error's status, as the log says.
                        ctx.response_status = out.reset.status
                    yield envoy_messages.reset_response(
                        out.reset, ctx.request_id, ctx.error_shape, out
                    )
                    return
                if phase == "request_headers" and not attempt and ctx.runtime.envoy_reads_request:
                    # Envoy's access log and span print the method and path from the
                    # first answer (envoy_request_record); the stages' own entries win.
                    recorded = recorded_request(ctx)
                    if out.metadata:
                        recorded.update(out.metadata)
                    out.metadata = recorded
                yield ctx.runtime.answers.phase_response(phase, out)
                if _last_request_message(phase, request):
                    # Resumed only once gRPC has written the answer (it asks for the next
                    # one after each write): a client gone while the gateway was still
                    # deciding cancels the stream before, and nothing left for a provider.
                    ctx.request_released = True
        except asyncio.CancelledError:
            # Envoy often closes the stream right after its last answer: only a
            # request whose response had not ended was cut short.
            if not ctx.completed:
                ctx.aborted = True
            raise
        finally:
            if not ctx.completed and ctx.error is None:
                ctx.aborted = True
            if not attempt:
                self._close(ctx)

    def _close(self, ctx: RequestContext) -> None:
        """Finish the request now, or once its closing hooks' store calls are done."""
        pending: list[Awaitable[None]] = []
        for closing in self._closing_hooks:
            try:
                found = closing(ctx)
            except Exception:
                log.exception("closing request %s failed", ctx.request_id)
                continue
            if found is not None:
                pending.append(found)
        if not pending:
            self._finish(ctx)
            return
        task = asyncio.get_running_loop().create_task(self._finish_after(ctx, pending))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        ctx.runtime.hold(task)

    async def _finish_after(self, ctx: RequestContext, pending: list[Awaitable[None]]) -> None:
        try:
            for each in pending:
                try:
                    await each
                except Exception:
                    log.exception("closing request %s failed", ctx.request_id)
        finally:
            for each in pending:
                if inspect.iscoroutine(each):
                    each.close()  # one cancelled before its turn (a no-op for the rest)
            # Even when cancelled (a stopping gateway): the request is logged and settled
            # with what its closing hooks learnt so far.
            self._finish(ctx)

    async def closed(self) -> None:
        """Wait until every request whose done hooks wait for a closing hook is finished
        (for tests, which read the log line and the metrics once the stream is done)."""
        while self._closing:
            await asyncio.wait(set(self._closing))

    def _finish(self, ctx: RequestContext) -> None:
        # Runs in the stream's `finally`, so a cancelled stream still logs and
        # counts; done hooks never wait, so nothing here can be cut short.
        for hook in self._done_hooks:
            try:
                hook(ctx)
            except Exception:
                log.exception("finishing request %s failed", ctx.request_id)
        ctx.runtime.services.metrics.requests_in_progress.dec()


def _add_request_metadata(ctx: RequestContext, phase: str, answer: ext.ProcessingResponse) -> None:
    """The metadata of an answer that ends the request: who was refused and why, and
    when it is the first answer, the method and path Envoy's records print."""
    if phase == "request_headers" and ctx.runtime.envoy_reads_request:
        envoy_messages.add_metadata(answer, recorded_request(ctx))
    envoy_messages.add_metadata(answer, request_metadata(ctx))


def _last_request_message(phase: str, request: ext.ProcessingRequest) -> bool:
    """The request's body, or its headers when no body follows (Envoy sends no body message
    then): once Envoy has the answer to it, the request goes upstream."""
    return phase == "request_body" or (
        phase == "request_headers" and request.request_headers.end_of_stream
    )


def _no_body_to_come(ctx: RequestContext, request: ext.ProcessingRequest, out: PhaseOutput) -> bool:
    """An AI call whose request ended with its headers: Envoy sends no body message."""
    return bool(request.request_headers.end_of_stream and ctx.accounted and out.answer is None)


def _no_answer_to_come(
    ctx: RequestContext, request: ext.ProcessingRequest, out: PhaseOutput
) -> bool:
    """An AI call's answer that ended with its headers (a provider's bodiless 429 or 200):
    Envoy sends no body message."""
    return bool(request.response_headers.end_of_stream and ctx.accounted and out.answer is None)


async def _read_empty_body(
    ctx: RequestContext, hooks: list[Callable[..., Any]], out: PhaseOutput, *args: bool
) -> None:
    """The body phase of a POST without a body (``curl -X POST``, ``content-length: 0``),
    or of an answer without one (``args``: the body hooks' ``end_of_stream``).

    Envoy sends no body message at all then, so the body phase (the model, the provider,
    the route to it) would never run and Envoy would answer its catch-all 404. The
    stages read the empty body here, in the headers' answer, and refuse it as they
    refuse any unreadable body, in the client's API shape. An answer's body phase is
    where it is read, translated, charged and logged: skipped, a bodiless success
    answer was charged as one cut mid-body (the whole completion allowance), and a
    translated one reached the client as an empty 200 logged completed."""
    for hook in hooks:
        pending = hook(ctx, out, b"", *args)
        if pending is not None:
            await pending
        if out.answer is not None:
            break


def _internal_error(ctx: RequestContext, phase: str) -> GatewayError:
    """A stage's bug, as the client sees it: a 500 in its API's shape, naming the request
    whose traceback the log holds, never the exception's own words (a host, a key).

    Raised out of the stream instead, it would end the gRPC call: Envoy then answers a
    bare 500 (or, with ``failure_mode_allow``, lets the request through unprocessed),
    and the request's log line says the client went away."""
    log.exception("request %s failed in the %s phase", ctx.request_id or "-", phase)
    return GatewayError(
        f"the gateway failed to process the request (request id {ctx.request_id or '-'})",
        code="gateway_error",
    )


def _hooks_of(stages: Sequence[object]) -> dict[str, list[Callable[..., Any]]]:
    return {
        phase: [getattr(stage, phase) for stage in stages if hasattr(stage, phase)]
        for phase in PHASES
    }


def trace_id_of(metadata: Iterable[tuple[str, Any]]) -> str | None:
    """The trace id of the W3C ``traceparent`` Envoy's tracer sends on the ext_proc stream
    (``metadata``: the stream's ``invocation_metadata()``)."""
    for key, value in metadata:
        if key == "traceparent":
            return parse_traceparent(value)
    return None


def _is_attempt(metadata: Iterable[tuple[str, Any]]) -> bool:
    for key, value in metadata:
        if key == ATTEMPT_METADATA:
            return bool(value == "attempt")
    return False


def _arguments(ctx: RequestContext, phase: str, request: ext.ProcessingRequest) -> tuple[Any, ...]:
    """The phase's own arguments for its hooks, recording what the context keeps."""
    if phase == "request_headers":
        found = envoy_messages.header_map(request.request_headers)
        ctx.request_headers = found
        if request.attributes:
            ctx.attributes = request.attributes
        if request.HasField("metadata_context"):
            ctx.body_hints = body_hints(request.metadata_context)
        ctx.method = found.get(":method", "")
        ctx.path = found.get(":path", "")
        return ()
    if phase == "request_body":
        return (request.request_body.body,)
    if phase == "response_headers":
        found = envoy_messages.header_map(request.response_headers)
        if request.response_headers.end_of_stream:
            ctx.completed = True
        # Who answered, where Envoy says (backends: Envoy's own reply or the provider's).
        ctx.response_details = _response_details(request)
        return (found,)
    body = request.response_body
    return (body.body, body.end_of_stream)


def body_hints(metadata: Any) -> BodyHints | None:
    """The body's ``model`` and ``stream`` as Envoy read them (None: it did not read the body).

    Envoy sets ``model`` only when the body parsed as JSON, so a missing ``stream``
    then means the body has none: not streamed, as the APIs define it. A value of
    another type is no hint at all (the gateway's parse will refuse it)."""
    found = metadata.filter_metadata.get(BODY_HINTS_NAMESPACE)
    if found is None:
        return None
    fields = found.fields
    model = fields.get("model")
    # HasField, not WhichOneof: the same test of the value's kind, in half the time.
    if model is None or not model.HasField("string_value"):
        return None
    stream = fields.get("stream")
    if stream is None:
        return BodyHints(model.string_value, False)
    if not stream.HasField("bool_value"):
        return BodyHints(model.string_value, None)
    return BodyHints(model.string_value, stream.bool_value)


def _response_details(request: ext.ProcessingRequest) -> str | None:
    """Envoy's ``response.code_details`` attribute, if it sent it with this message."""
    found = request.attributes.get(ATTRIBUTES_KEY)
    return _details_in(found.fields) if found is not None else None


def _details_in(fields: Any) -> str | None:
    details = fields.get(RESPONSE_DETAILS_ATTRIBUTE)
    return details.string_value if details is not None else None


def lean_response_headers(request: ext.ProcessingRequest, stream: bool) -> dict[str, str]:
    """What the lean path knows of the response headers, from the first body message.

    Envoy sends the ``response.code`` and ``response.code_details`` attributes with
    it. A provider's answer is marked like Envoy's router marks it, so stages tell
    it from Envoy's own local reply (timeout, provider unreachable) as they do on
    the full path. The content type is guessed from the answer's first bytes: JSON
    when they open an object or array (an error, or a provider that ignored
    ``stream``), an event stream when they open an event's field (a provider or a
    proxy that streams a request that did not ask), else the one a pass-through
    answer has, an event stream when the client asked for a stream. A compressed
    answer is told by its first bytes too (``answer_encoding.sniffed_encoding``), and
    its kind by the first bytes it decodes to.
    Header changes a stage asks for cannot apply (the headers have left); lean
    requests are the ones that need none.
    """
    found = request.attributes.get(ATTRIBUTES_KEY)
    fields = found.fields if found is not None else {}
    code = fields.get("response.code")
    status = int(code.number_value) if code is not None else 0
    result = {":status": str(status)}
    # The attributes' fields as read above: each read of the map builds its view anew.
    if _details_in(fields) == VIA_UPSTREAM:
        result[ENVOY_UPSTREAM_TIME] = "0"
    body = request.response_body.body
    encoding = sniffed_encoding(body)
    if encoding:
        # Compressed although the gateway asked for none (answer_encoding); a
        # compressed error is taken for JSON, the errors of pass-through providers.
        result["content-encoding"] = encoding
    # A compressed answer's opening is read decoded (a compressed answer is rare: only
    # then is anything decoded here).
    opening = (decoded_opening(body, encoding) if encoding else body).lstrip()
    if (encoding and status >= 400) or opening[:1] in (b"{", b"["):
        result["content-type"] = JSON
    elif 0 < status < 400:
        result["content-type"] = SSE if stream or opening.startswith(_EVENT_FIELDS) else JSON
    return result

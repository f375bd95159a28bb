"""The one generic processor: drives the ordered stages through an ext_proc stream.

Envoy opens one gRPC stream per HTTP request and sends up to four messages
(request headers, request body, response headers, response body chunks). For
each, the processor calls the matching hook of every stage that has one, in
order, with a fresh ``PhaseOutput``, and answers Envoy with what they wrote.
A hook stops the request by raising ``GatewayError`` (answered as an OpenAI
error) or by setting ``out.answer`` (the gateway answers the client itself).
When the stream ends, however it ends, every stage's ``done`` hook runs
exactly once, off the response path.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import envoy_messages
from extproc.context import PhaseOutput, RequestContext
from extproc.errors import GatewayError
from extproc.runtime import Runtime

log = logging.getLogger(__name__)

PHASES = ("request_headers", "request_body", "response_headers", "response_body")


class Processor:
    def __init__(self, runtime: Callable[[], Runtime], stages: Sequence[object]) -> None:
        self._runtime = runtime
        self._hooks: dict[str, list[Callable[..., Any]]] = {
            phase: [getattr(stage, phase) for stage in stages if hasattr(stage, phase)]
            for phase in PHASES
        }
        self._done_hooks: list[Callable[[RequestContext], Any]] = [
            getattr(stage, "done")  # noqa: B009 - stages are plain objects
            for stage in stages
            if hasattr(stage, "done")
        ]
        self._awaitable = {
            hook: inspect.iscoroutinefunction(hook)
            for hooks in self._hooks.values()
            for hook in hooks
        }
        self._finishing: set[asyncio.Task[None]] = set()

    async def process(
        self, requests: AsyncIterator[ext.ProcessingRequest]
    ) -> AsyncIterator[ext.ProcessingResponse]:
        """Serve one ext_proc stream, i.e. one HTTP request."""
        ctx = RequestContext(runtime=self._runtime())
        try:
            async for request in requests:
                phase = request.WhichOneof("request")
                if phase is None or phase not in self._hooks:
                    continue
                response, stop = await self._phase(ctx, phase, request)
                yield response
                if stop:
                    return
        except asyncio.CancelledError:
            # Envoy often closes the stream right after its last answer: only a
            # request whose response had not ended was cut short.
            if not ctx.completed:
                ctx.aborted = True
            raise
        finally:
            if not ctx.completed and ctx.error is None:
                ctx.aborted = True
            self._finish(ctx)

    async def _phase(
        self, ctx: RequestContext, phase: str, request: ext.ProcessingRequest
    ) -> tuple[ext.ProcessingResponse, bool]:
        out = PhaseOutput()
        try:
            args = self._arguments(ctx, phase, request)
            for hook in self._hooks[phase]:
                if self._awaitable[hook]:
                    await hook(ctx, out, *args)
                else:
                    hook(ctx, out, *args)
                if out.answer is not None:
                    status, body, answer_headers = out.answer
                    ctx.response_status = status
                    ctx.completed = True
                    return envoy_messages.immediate_response(status, body, answer_headers), True
        except GatewayError as error:
            ctx.error = error
            ctx.response_status = error.status
            return envoy_messages.error_response(error, ctx.request_id), True
        return envoy_messages.phase_response(phase, out), False

    @staticmethod
    def _arguments(
        ctx: RequestContext, phase: str, request: ext.ProcessingRequest
    ) -> tuple[Any, ...]:
        if phase == "request_headers":
            found = envoy_messages.header_map(request.request_headers)
            ctx.request_headers = found
            ctx.method = found.get(":method", "")
            ctx.path = found.get(":path", "")
            return ()
        if phase == "request_body":
            return (request.request_body.body,)
        if phase == "response_headers":
            found = envoy_messages.header_map(request.response_headers)
            if request.response_headers.end_of_stream:
                ctx.completed = True
            return (found,)
        body = request.response_body
        return (body.body, body.end_of_stream)

    def _finish(self, ctx: RequestContext) -> None:
        # The log line, metrics and store write must neither delay Envoy's answer
        # nor die with a cancelled stream, so they run in their own task.
        task = asyncio.get_running_loop().create_task(self._run_done(ctx))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _run_done(self, ctx: RequestContext) -> None:
        for hook in self._done_hooks:
            try:
                await hook(ctx)
            except Exception:
                log.exception("finishing request %s failed", ctx.request_id)

    async def drain(self) -> None:
        """Wait for the finishing work of requests that already ended (shutdown)."""
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)

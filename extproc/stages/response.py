"""Response phases: pick how to read the body, read usage, hide the gateway's usage chunk.

An SSE answer switches the response body to STREAMED (Envoy ``mode_override``)
so chunks reach the client as they come; anything else stays buffered. Error
bodies that are not JSON (an HTML page from a proxy, say) are replaced by an
OpenAI-shaped error so clients can always parse what they get.
"""

from __future__ import annotations

import time

from extproc.context import ModeOverride, PhaseOutput, RequestContext, Usage
from extproc.errors import anthropic_error_body, error_body
from extproc.translators.anthropic_anthropic import EventStreamReader, MessageReader
from extproc.translators.openai_openai import ChunkStreamReader, CompletionReader


class UpstreamErrorReplacer:
    """Replaces a non-JSON error body with OpenAI's error shape, keeping the status."""

    def __init__(self, status: int, shape: str) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self._status = status
        self._shape = shape

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if not end_of_stream:
            return b""
        message = f"the provider answered with HTTP {self._status}"
        if self._shape == "anthropic":
            return anthropic_error_body(message, self._status)
        kind = "server_error" if self._status >= 500 else "invalid_request_error"
        return error_body(message, kind, code="upstream_error")


class ResponseStage:
    def response_headers(
        self, ctx: RequestContext, out: PhaseOutput, response_headers: dict[str, str]
    ) -> None:
        status = response_headers.get(":status", "0")
        ctx.response_status = int(status) if status.isdigit() else 0
        ctx.first_byte_at = time.monotonic()
        if not ctx.accounted:
            return
        content_type = response_headers.get("content-type", "")
        anthropic = ctx.error_shape == "anthropic"
        if ctx.response_status < 400:
            if ctx.stream and content_type.startswith("text/event-stream"):
                ctx.translator = (
                    EventStreamReader()
                    if anthropic
                    else ChunkStreamReader(hide_usage_chunk=not ctx.client_wants_usage)
                )
                out.mode_override = ModeOverride(response_body="STREAMED")
            else:
                ctx.translator = MessageReader() if anthropic else CompletionReader()
        elif "json" not in content_type:
            ctx.translator = UpstreamErrorReplacer(ctx.response_status, ctx.error_shape)
            out.set_headers["content-type"] = "application/json"
            out.remove_headers.append("content-length")

    def response_body(
        self, ctx: RequestContext, out: PhaseOutput, chunk: bytes, end_of_stream: bool
    ) -> None:
        translator = ctx.translator
        if translator is None:
            if end_of_stream:
                ctx.completed = True
            return
        replaced = translator.feed(chunk, end_of_stream)
        if replaced is not None:
            out.body = replaced
        if not end_of_stream:
            return
        ctx.completed = True
        if translator.usage is not None:
            ctx.usage = translator.usage
            ctx.usage_reported = True
        ctx.response_model = translator.response_model
        out.metadata = usage_metadata(ctx)


def usage_metadata(ctx: RequestContext) -> dict[str, object]:
    """What Envoy's access log and tracers see under the gateway's metadata namespace."""
    return {
        "route": ctx.route.name if ctx.route else "",
        "provider": ctx.provider or "",
        "model": ctx.model or "",
        "response_model": ctx.response_model or "",
        "prompt_tokens": ctx.usage.prompt_tokens,
        "completion_tokens": ctx.usage.completion_tokens,
        "total_tokens": ctx.usage.total_tokens,
        "api_key_id": ctx.identity.api_key_id or "",
        "user_id": ctx.identity.user_id or "",
        "group_id": ctx.identity.group_id or "",
        "auth_method": ctx.identity.method,
    }

"""Agent routes in the request flow: two stages, one on each side of authentication.

``AgentRouteStage`` (request headers, before authentication) points Envoy at the
route's upstream and decides what kind of request this is (``routing``): a
JSON-RPC POST, an MCP server stream (GET) or session end (DELETE), or an A2A
agent card, which is public so that clients can discover how to authenticate.
``AgentCallStage`` (after the client's credentials are stripped) puts the
upstream's own credential in (``caller``), keeps each MCP session and A2A task to the
caller who opened it (``binding``), reads the JSON-RPC body once and
applies access rules and request limits (``admission``, ``limit_check``), reads
the answer as it streams (``answer_reading``, ``upstream_status``), and records
the call for the log line and the metrics (``final_outcome``).

Refusals of a JSON-RPC request are JSON-RPC error objects with the request's id,
so SDKs surface them as that call's error (``refusals``). Failures before the
body is read (no or bad credentials, a method the route does not take) are HTTP
errors as on every route; so is the upstream refusing the gateway's own
credential (a 502: the client's never goes upstream, it is not the client's to
fix). Their bodies are JSON-RPC errors too, with the id null
(``ctx.error_shape``), and so are Envoy's own replies on agent routes
(``extproc.agents.envoy``): MCP's SDK reads no other error body.
"""

from __future__ import annotations

from collections.abc import Awaitable

# Modules, not names: each may be imported first (the stages package imports this one),
# and a name looked up at call time never meets a module still being initialised.
from extproc.agents import admission, answer_reading, binding, caller, final_outcome, routing
from extproc.context import PhaseOutput, RequestContext
from extproc.envoy_paths import PATH_METADATA_KEY
from extproc.stages.model_credentials import hide_own_key_in_path


class AgentRouteStage:
    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> None:
        routing.route_agent_request(ctx, out)


class AgentCallStage:
    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> Awaitable[None] | None:
        caller.set_upstream_identity(ctx, out)
        _record_path_without_own_key(ctx, out)
        return binding.check_session(ctx, out)

    def request_body(
        self, ctx: RequestContext, out: PhaseOutput, body: bytes
    ) -> Awaitable[None] | None:
        return admission.admit_body(ctx, out, body)

    def response_headers(
        self, ctx: RequestContext, out: PhaseOutput, response_headers: dict[str, str]
    ) -> Awaitable[None] | None:
        answer_reading.start_answer(ctx, out, response_headers)
        # An initialize's answer opens a session, a DELETE's ends one: never both.
        return binding.record_session(ctx, response_headers) or binding.end_session(
            ctx, response_headers
        )

    def response_body(
        self, ctx: RequestContext, out: PhaseOutput, chunk: bytes, end_of_stream: bool
    ) -> Awaitable[None] | None:
        answer_reading.read_answer(ctx, out, chunk, end_of_stream)
        # Before this chunk goes on: the client's next request may name the task in it.
        return binding.record_task(ctx)

    def done(self, ctx: RequestContext) -> None:
        final_outcome.record_outcome(ctx)


def _record_path_without_own_key(ctx: RequestContext, out: PhaseOutput) -> None:
    """An agent call's own key in its path (an MCP client given its key in the server's
    URL) ``[redacted]`` in Envoy's access log and span: an agent call sends Envoy no
    other metadata of its path. After authentication, once the key is known good."""
    if ctx.agent is None:
        return
    hide_own_key_in_path(ctx)
    if ctx.recorded_path is not None:
        out.metadata = {**(out.metadata or {}), PATH_METADATA_KEY: ctx.recorded_path}

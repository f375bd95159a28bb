"""The call's outcome once its request is over, and its metrics.

A request the gateway refused with an HTTP error before anything went upstream,
or one whose client left before its answer, is recorded as such; tool calls, A2A
messages and hidden tools are then counted in the agent metrics.
"""

from __future__ import annotations

from extproc.agents import call as outcome
from extproc.agents.answer_reading import answer_reader
from extproc.agents.answers import TASK_STATES
from extproc.agents.call import AgentCall
from extproc.agents.refusals import refusal_status
from extproc.context import RequestContext
from extproc.credential_cleaner import echoed_credential, holds_credential, recorded_name
from extproc.errors import REDACTED

# The `state` label of a task state A2A does not define.
OTHER_STATE = "other"


def record_outcome(ctx: RequestContext) -> None:
    call = ctx.agent
    if call is None:
        return
    # The tool's label is taken from the name as sent, before the log line's is cleaned.
    label = _tool_label(ctx, call.tool) if call.is_tool_call else None
    # The method and tool as sent are the log line's: a token pasted there keeps its
    # shape (the request's own key the line hides wherever it is).
    call.method = recorded_name(call.method)
    call.tool = recorded_name(call.tool)
    if call.status == outcome.FORWARDED and ctx.error is not None:
        # Refused with an HTTP error before anything went upstream (credentials, a
        # method or size the route does not take, the quota store down): the log line
        # and the metrics must not count it as a call the server saw.
        call.status = refusal_status(ctx.error)
    elif ctx.aborted and (call.status == outcome.FORWARDED or _awaiting_end(call)):
        # Gone before the answer: for an A2A stream, before its task settled.
        call.status = outcome.ABORTED
    if not (call.is_tool_call or call.is_message or call.tools_hidden):
        return
    metrics = ctx.runtime.services.metrics.agents
    identity = ctx.identity
    who = (identity.api_key_id or "", identity.user_id or "", identity.group_id or "")
    ended = call.answered_at if call.answered_at is not None else None
    seconds = (ended - ctx.started) if ended is not None else ctx.elapsed_ms() / 1000.0
    server = call.server.name
    if label is not None:
        metrics.child(metrics.tool_calls, server, label, call.status, *who).inc()
        metrics.child(metrics.tool_call_duration, server, label, call.status).observe(seconds)
    if call.tools_hidden:
        metrics.child(metrics.tools_hidden, server).inc(call.tools_hidden)
    if call.is_message and call.method is not None:
        metrics.child(metrics.a2a_messages, server, call.method, call.status, *who).inc()
        metrics.child(metrics.a2a_message_duration, server, call.method).observe(seconds)
        if call.task_state is not None:
            # A2A's own states only: an agent's made-up ones (the log line keeps them) would
            # open a series each and, once the label's budget is spent, fold a real
            # "failed" into "other", blinding the failed-task alerts of every agent.
            state = call.task_state if call.task_state in TASK_STATES else OTHER_STATE
            metrics.child(metrics.a2a_tasks, server, state).inc()


def _tool_label(ctx: RequestContext, tool: str | None) -> str | None:
    """The tool name as its metrics' label: ``[redacted]`` when it holds the request's
    own key or a well-known credential's shape, even in part. A client whose settings
    were swapped names a tool with its key; the log line hides it, but a label is read
    by everyone who can query Prometheus, and kept for its retention."""
    if tool is None:
        return None
    return REDACTED if holds_credential(tool, echoed_credential(ctx)) else tool


def _awaiting_end(call: AgentCall) -> bool:
    reader = answer_reader(call)
    return reader is not None and reader.awaiting_end

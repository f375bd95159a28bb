"""MCP sessions and A2A tasks bound to the caller who opened them.

Every caller reaches an agent server with the gateway's one credential, so a session id
(``Mcp-Session-Id``) or a task id is all the server asks for: a caller who learnt
another's (a shared log, a screenshot) could act in their session, read its server
stream, end it, or read, cancel, follow or continue their task. The gateway records who
opened each (``store.agent_owners``) and answers another caller as the server answers
an id it does not know: MCP with HTTP 404 and a JSON-RPC error (the client opens a new
session), A2A with ``TaskNotFoundError`` (-32001), so nobody learns that the id exists.

- Recorded: an MCP session when the answer to ``initialize`` names it (the response
  headers, before the client learns it); an A2A task when the answer to a message
  (``SendMessage``, ``message/stream``...) first names it, before that chunk goes on.
  Deleted: an MCP session's when its server ends it (a ``DELETE`` answered 2xx);
  tasks end at their server unseen, and their records expire.
- Checked: every MCP request carrying ``Mcp-Session-Id`` (request headers), and every
  A2A request naming a task (its body: ``params.id`` of the task methods,
  ``taskId`` of the push-notification ones, ``message.taskId`` of a message continuing
  a task), before any limit counts it: in the request limits' own round trip when
  they count the request (``OwnerCheck``), so a phase asks the store once.
- An id with no record (opened before the gateway recorded owners, or its record
  expired) is claimed by the first caller who uses it, in the same command that looked
  it up: refusing it would end every session and orphan every task open at an upgrade.
- The caller is ``owner_of``: the user when the credential names one, so a person's
  keys (a rotated one too) share their sessions; else the key. An unauthenticated
  route binds nothing: anyone could be anyone there.
- A store that does not answer follows ``quotas.on_store_failure``, as the lookup of a
  stored response's owner does: ``fail_closed`` answers 503, ``fail_open`` lets the
  request through unchecked. A record that could not be written is logged and counted;
  this process still keeps it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from extproc.agents import call as outcome
from extproc.agents import jsonrpc
from extproc.agents.call import A2A_MESSAGE_METHODS, AgentCall
from extproc.agents.jsonrpc import RequestId, RpcMessage
from extproc.agents.mcp_headers import SESSION_HEADER
from extproc.agents.refusals import refuse
from extproc.config.agents_model import AgentProtocol
from extproc.config.quota_model import StoreFailure
from extproc.context import PhaseOutput, RequestContext
from extproc.errors import NotFoundError, ServiceUnavailableError
from extproc.quota.store import RecordClaim
from extproc.store.agent_owners import AgentOwners, Kind, binding_digest
from extproc.store.outage_log import OutageLog
from extproc.store.response_owners import NOBODY, owner_of

log = logging.getLogger(__name__)

# A2A methods whose params.id is the task (A2A 1.0 and 0.3).
_ID_IS_TASK = frozenset(
    {
        "GetTask", "CancelTask", "SubscribeToTask",
        "tasks/get", "tasks/cancel", "tasks/resubscribe",
        "tasks/pushNotificationConfig/get", "tasks/pushNotificationConfig/list",
        "tasks/pushNotificationConfig/delete",
    }
)  # fmt: skip
# How a task id is named elsewhere in params: JSON's name and the proto field's, which
# the SDKs' parsers (protobuf's, pydantic's by name) take too.
_TASK_KEYS = ("taskId", "task_id")
# A failed lookup under fail_open: said once per outage, not once per request.
_NOT_CHECKED = OutageLog(log, "agent session and task owner store unavailable, not checked")
# What each refusal answers: the servers' own words for an id they do not know.
_SESSION_UNKNOWN = "Session not found"
_TASK_UNKNOWN = "Task not found"


def check_session(ctx: RequestContext, out: PhaseOutput) -> Awaitable[None] | None:
    """Refuse an MCP request on another caller's session (request headers)."""
    call = ctx.agent
    session = ctx.request_headers.get(SESSION_HEADER)
    if call is None or call.protocol is not AgentProtocol.MCP or not session:
        return None
    return _check(ctx, out, call, "session", [session], [None], None)


def check_tasks(
    ctx: RequestContext,
    out: PhaseOutput,
    call: AgentCall,
    request: RpcMessage,
    ids: list[RequestId],
    then: Then | None,
) -> Awaitable[None] | None:
    """Refuse an A2A request on another caller's task; else go on with ``then`` (the
    request limits, counted only for a request that may go on)."""
    return _check(ctx, out, call, "task", named_tasks(request), ids, then)


def named_tasks(request: RpcMessage) -> list[str]:
    """The task ids an A2A request names, under every spelling its server could read."""
    params = request.params
    if not isinstance(params, dict):
        return []
    found: list[Any] = [params.get(key) for key in _TASK_KEYS]
    if request.method in _ID_IS_TASK:
        found.append(params.get("id"))
    message = params.get("message")
    if request.method in A2A_MESSAGE_METHODS and isinstance(message, dict):
        found.extend(message.get(key) for key in _TASK_KEYS)
    return list(dict.fromkeys(task for task in found if isinstance(task, str) and task))


def record_session(ctx: RequestContext, response_headers: dict[str, str]) -> Awaitable[None] | None:
    """Record the caller as the owner of the session an ``initialize`` answer opened."""
    call = ctx.agent
    if call is None or call.kind != "rpc" or call.method != "initialize":
        return None
    session = response_headers.get(SESSION_HEADER)
    if not session or not response_headers.get(":status", "").startswith("2"):
        return None
    return _record(ctx, call, "session", session)


def end_session(ctx: RequestContext, response_headers: dict[str, str]) -> Awaitable[None] | None:
    """Delete the record of a session its server ended (a ``DELETE`` answered 2xx): the
    store keeps no records of ended sessions. One the server refused keeps its record."""
    call = ctx.agent
    if call is None or call.kind != "session_end":
        return None
    session = ctx.request_headers.get(SESSION_HEADER)
    if not session or not response_headers.get(":status", "").startswith("2"):
        return None
    bound = _bound(ctx, call)
    if bound is None:
        return None
    owners, _ = bound
    return _forget(ctx, owners, binding_digest(call.server.name, "session", session))


async def _forget(ctx: RequestContext, owners: AgentOwners, digest: str) -> None:
    runtime = ctx.runtime
    try:
        async with asyncio.timeout(runtime.config.store.timeout_ms / 1000.0):
            await owners.forget(digest)
    except Exception as exc:
        runtime.services.metrics.store_error("agent_owner_forget")
        # The record expires with binding_ttl_s; the session id is dead at its server.
        log.warning(
            "the record of an ended agent session was not deleted (request %s): %s",
            ctx.request_id,
            type(exc).__name__,
        )


def record_task(ctx: RequestContext) -> Awaitable[None] | None:
    """Record the caller as the owner of the task a message's answer names (once)."""
    call = ctx.agent
    if call is None or not call.is_message or call.task_id is None:
        return None
    if call.bound_task == call.task_id:
        return None
    call.bound_task = call.task_id
    return _record(ctx, call, "task", call.task_id)


def _bound(ctx: RequestContext, call: AgentCall) -> tuple[AgentOwners, str] | None:
    """The records and the caller, when the server binds its sessions and tasks."""
    owners = ctx.runtime.services.agent_owners
    if owners is None or not call.server.bind_to_caller:
        return None
    caller = owner_of(ctx.identity)
    if caller == NOBODY:
        return None
    return owners, caller


# The request's next step (its request limits): given the owner check when that must
# ask the store, it carries the check in its own round trip if it makes one (it then
# answers for the check, returning the awaitable); None when it has nothing to do.
Then = Callable[["OwnerCheck | None"], Awaitable[None] | None]


class OwnerCheck:
    """The owners of a request's ids that this process has not seen yet, to ask the
    store: alone (``_ask``), or in the round trip of the request's limits."""

    def __init__(
        self,
        ctx: RequestContext,
        out: PhaseOutput,
        call: AgentCall,
        kind: Kind,
        ids: list[RequestId],
        owners: AgentOwners,
        caller: str,
        digests: list[str],
    ) -> None:
        self._ctx, self._out, self._call, self._kind, self._ids = ctx, out, call, kind, ids
        self._owners, self._caller, self._digests = owners, caller, digests
        self.ttl_s = call.server.binding_ttl_s

    @property
    def claims(self) -> list[RecordClaim]:
        """The claims to send with the request limits' reservation."""
        return [self._owners.claim_of(d, self._caller, self.ttl_s) for d in self._digests]

    async def ask(self) -> list[str]:
        """The owners, claimed in a round trip of their own."""
        return await self._owners.claim(self._digests, self._caller, self.ttl_s)

    def admits(self, found: list[str]) -> bool:
        """Whether the owners found are the caller; else the request is refused."""
        _NOT_CHECKED.answered()
        for digest, owner in zip(self._digests, found, strict=True):
            self._owners.claimed(digest, owner, self.ttl_s)
        if all(owner == self._caller for owner in found):
            return True
        _refuse(self._ctx, self._out, self._call, self._kind, self._ids)
        return False

    def failed(self, exc: Exception) -> bool:
        """The store did not answer: whether the request goes on (``fail_open``)."""
        runtime = self._ctx.runtime
        runtime.services.metrics.store_error("agent_owner_lookup")
        if runtime.config.quotas.on_store_failure is StoreFailure.FAIL_OPEN:
            _NOT_CHECKED.failed(exc)
            return True
        down = ServiceUnavailableError(
            "the store that records who opened agent sessions and tasks is unavailable;"
            " try again shortly",
            code="agent_owner_store_unavailable",
        )
        data = {"type": down.error_type, "code": down.code}
        refuse(self._ctx, self._out, self._ids, False, jsonrpc.INTERNAL_ERROR,
               outcome.UNAVAILABLE, down, data, http_status=down.status)  # fmt: skip
        return False


def _check(
    ctx: RequestContext,
    out: PhaseOutput,
    call: AgentCall,
    kind: Kind,
    named: list[str],
    ids: list[RequestId],
    then: Then | None,
) -> Awaitable[None] | None:
    bound = _bound(ctx, call) if named else None
    if bound is None:
        return then(None) if then is not None else None
    owners, caller = bound
    server = call.server.name
    digests = [binding_digest(server, kind, each) for each in named]
    unknown = []
    for digest in digests:
        owner = owners.known(digest)
        if owner is None:
            unknown.append(digest)
        elif owner != caller:
            _refuse(ctx, out, call, kind, ids)
            return None
    if not unknown:
        # Every binding known to this process: no round trip.
        return then(None) if then is not None else None
    check = OwnerCheck(ctx, out, call, kind, ids, owners, caller, unknown)
    # One round trip in the phase: the request limits' carries the check when they count
    # this request (claimed first, so a request refused as another's counts in none).
    counting = then(check) if then is not None else None
    return counting if counting is not None else _ask(ctx, check)


async def _ask(ctx: RequestContext, check: OwnerCheck) -> None:
    try:
        async with asyncio.timeout(ctx.runtime.config.store.timeout_ms / 1000.0):
            found = await check.ask()
    except Exception as exc:
        check.failed(exc)
    else:
        check.admits(found)


def _refuse(
    ctx: RequestContext, out: PhaseOutput, call: AgentCall, kind: Kind, ids: list[RequestId]
) -> None:
    """Answer as the server answers an id it does not know: the caller learns nothing of
    whose it is, or that it exists. The log line says why (``not_owner``)."""
    ctx.runtime.services.metrics.agents.binding_refused(call.server.name, kind)
    if kind == "session":
        # The MCP transport's answer for an unknown session: clients open a new one.
        unknown = NotFoundError(_SESSION_UNKNOWN, code="session_not_found")
        refuse(ctx, out, [None], False, jsonrpc.INVALID_REQUEST, outcome.NOT_OWNER, unknown,
               http_status=404)  # fmt: skip
        return
    unknown = NotFoundError(_TASK_UNKNOWN, code="task_not_found")
    refuse(ctx, out, ids, False, jsonrpc.TASK_NOT_FOUND, outcome.NOT_OWNER, unknown)


async def _record(ctx: RequestContext, call: AgentCall, kind: Kind, object_id: str) -> None:
    bound = _bound(ctx, call)
    if bound is None:
        return
    owners, caller = bound
    digest = binding_digest(call.server.name, kind, object_id)
    if owners.known(digest) is not None:
        return  # a task continued: its record was read before the request went on
    ttl_s = call.server.binding_ttl_s
    # Kept here whatever the store says: this process at least keeps callers apart.
    owners.remember(digest, caller, ttl_s)
    runtime = ctx.runtime
    try:
        async with asyncio.timeout(runtime.config.store.timeout_ms / 1000.0):
            await owners.claim([digest], caller, ttl_s)
    except Exception as exc:
        runtime.services.metrics.store_error("agent_owner_record")
        # Other replicas let the first caller who uses it claim it.
        log.warning(
            "the caller who opened an agent %s was not recorded (request %s): %s",
            kind,
            ctx.request_id,
            type(exc).__name__,
        )

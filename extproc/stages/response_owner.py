"""Stored Responses API responses: only the caller who created one continues it.

Every caller shares the provider's account, where the provider stores each response
(``store`` defaults to true). ``ResponseRecordStage`` records who created each stored
response the moment its answer ends, before the client reads its end, so the client's
next request finds the record (``store.response_owners``); a stream the client left
before its end, or while that record was being written, is recorded when the request
ends (its id came with its first event), leaving it to the provider to say whether that
response can be continued. The record says whether the route guarded the answer
(``stages.stored_responses`` does not read such a response back).

``PreviousResponseStage`` looks up the response a request names in
``previous_response_id`` (a response, a compaction, a token count) and refuses it, as
OpenAI refuses an id it does not know (400 ``previous_response_not_found``), when the
record is missing or names another caller: whether another caller's response exists is
not told. A found record gives the quota the stored context's size, which the body does
not show (``stored_context_tokens``).

Failover: a Responses API request that builds on context one provider account keeps
(``previous_response_id``, ``conversation``, a stored ``prompt``) does not fail over:
another member would not have it. It goes to the model's own provider alone, or, for a
previous response a fallback's provider stores (the record names the provider that
answered, after a failover too), to that fallback alone (``pin_to_fallback``: the
chain's pinned route, ``envoy_failover.pinned_cluster_name``). A token count, which never
fails over, of a continuation of such a response goes to that fallback's own provider
(``_count_at_fallback``), as the continuation itself would.

Store failures: a lookup the store cannot answer follows ``quotas.on_store_failure``
(open: unchecked; closed: 503); a record the store cannot take is logged and counted,
and the answer goes on (that response can then not be continued through the gateway).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from extproc.answer_status import no_answer
from extproc.backends import provider_api, serves_client_api
from extproc.config.model import RouteApi
from extproc.config.quota_model import StoreFailure
from extproc.context import PhaseOutput, RequestContext
from extproc.errors import BadRequestError, ServiceUnavailableError
from extproc.runtime import Upstream
from extproc.stages.attempt import serves_request
from extproc.stages.partial_usage import usage_if_ended_now
from extproc.store.outage_log import OutageLog
from extproc.store.response_owners import (
    NOBODY,
    ResponseOwner,
    ResponseOwners,
    owner_of,
    recordable,
)

log = logging.getLogger(__name__)

# The endpoints whose body may name a stored response to build on.
_CONTINUING_APIS = frozenset(
    {
        RouteApi.OPENAI_RESPONSES,
        RouteApi.OPENAI_RESPONSES_COMPACT,
        RouteApi.OPENAI_RESPONSES_INPUT_TOKENS,
    }
)
_PARAM = "previous_response_id"


class PreviousResponseStage:
    """Request body: the response named in ``previous_response_id`` must be the caller's;
    a request building on context a provider keeps does not fail over."""

    def __init__(self) -> None:
        # A lookup the store fails under fail_open: said once per outage, not per request.
        self._not_checked = OutageLog(log, "response owner store unavailable, not checked")

    def request_body(
        self, ctx: RequestContext, out: PhaseOutput, body: bytes
    ) -> Awaitable[None] | None:
        owners = ctx.runtime.services.response_owners
        route = ctx.route
        if route is None or route.api not in _CONTINUING_APIS:
            return None
        parsed = ctx.body or {}
        primary = ctx.failover_model
        if primary is not None and builds_on_stored_context(parsed):
            # The context is in one provider's account: another member would answer its
            # own 404 (or, worse, without the context). The model's own provider answers
            # alone; a previous response a fallback's provider stores, that fallback
            # (_check_owner).
            ctx.failover_model = None
        previous = parsed.get(_PARAM)
        if owners is None or not isinstance(previous, str):
            return None  # none named (the body's checks refused any other type)
        return _check_owner(ctx, owners, previous, primary, self._not_checked)


def builds_on_stored_context(body: dict[str, Any]) -> bool:
    """Whether a Responses API body builds on what the provider's account keeps: a
    stored response, a conversation or a stored prompt."""
    return any(body.get(name) is not None for name in (_PARAM, "conversation", "prompt"))


def pin_to_fallback(ctx: RequestContext, primary: str, provider: str) -> bool:
    """Send the request to the member of ``primary``'s chain on ``provider`` alone (the
    per-attempt filter reads and answers it as that member: its name prices the answer),
    when there is one its caller may use; False when there is none."""
    if not _to_member(ctx, primary, provider):
        return False
    ctx.failover_model = primary
    return True


def _count_at_fallback(ctx: RequestContext, provider: str) -> bool:
    """Send a token count straight to the member of its model's chain on ``provider``, when
    there is one its caller may use. A count never fails over, so it has no chain of its
    own to pin; yet the response it builds on is there, where a response or a compaction
    of the same model would be pinned: counted elsewhere, it would be refused."""
    route = ctx.route
    model = ctx.model
    if route is None or route.api is not RouteApi.OPENAI_RESPONSES_INPUT_TOKENS or not model:
        return False
    primary = ctx.runtime.canonical_model.get(model) or model
    # That member's own cluster, as any request of its model: nothing to price or retry.
    return _to_member(ctx, primary, provider, counted=True)


def _to_member(ctx: RequestContext, primary: str, provider: str, counted: bool = False) -> bool:
    """Point the request at the member of ``primary``'s chain on ``provider``, when there is
    one that answers the request's API (a count's: where its response is answered) and its
    caller may use."""
    member = ctx.runtime.failover.get(primary, {}).get(provider)
    if member is None or not _may_serve(ctx, *member, counted):
        return False
    _point_at(ctx, member[1])
    return True


def _to_group_member(ctx: RequestContext, provider: str) -> bool:
    """For a request that asked for a model group: serve it by the group's member on
    ``provider``, where the response it builds on is stored, when there is one its caller
    may use that answers the request. The member drawn was chosen at random; the
    conversation goes on where its provider keeps it."""
    runtime = ctx.runtime
    group = runtime.groups.get(ctx.model_group) if ctx.model_group is not None else None
    route = ctx.route
    if group is None or route is None:
        return False
    counted = route.api is RouteApi.OPENAI_RESPONSES_INPUT_TOKENS
    for name in group.member_names:
        upstream = runtime.resolve_upstream(name, route)
        if upstream is None or upstream.provider.name != provider:
            continue
        if _may_serve(ctx, name, upstream, counted):
            ctx.model = name
            _point_at(ctx, upstream)
            return True
    return False


def _may_serve(ctx: RequestContext, name: str, upstream: Upstream, counted: bool) -> bool:
    """Whether model ``name`` answers the request's API (a count's: where its response is
    answered) and its caller may use it."""
    route = ctx.route
    if route is None:
        return False
    if counted:
        if not serves_client_api(RouteApi.OPENAI_RESPONSES, upstream):
            return False
    elif not serves_request(ctx, upstream):
        return False
    group = ctx.runtime.group_asked(ctx.model_group, name)
    return ctx.runtime.access.denial(ctx.identity, name, route.name, group) is None


def _point_at(ctx: RequestContext, upstream: Upstream) -> None:
    ctx.upstream = upstream
    ctx.provider = upstream.provider.name
    ctx.provider_type = upstream.provider.type
    ctx.provider_api = provider_api(upstream)
    ctx.upstream_model = upstream.upstream_model


async def _check_owner(
    ctx: RequestContext,
    owners: ResponseOwners,
    response_id: str,
    primary: str | None,
    not_checked: OutageLog,
) -> None:
    runtime = ctx.runtime
    try:
        # asyncio.timeout, not wait_for: no extra task per lookup.
        async with asyncio.timeout(runtime.config.store.timeout_ms / 1000.0):
            found = await owners.find(response_id)
    except Exception as exc:
        runtime.services.metrics.store_error("response_owner_lookup")
        if runtime.config.quotas.on_store_failure is StoreFailure.FAIL_OPEN:
            not_checked.failed(exc)
            return
        raise ServiceUnavailableError(
            "the store that records stored responses is unavailable; try again shortly",
            code="response_store_unavailable",
        ) from None
    not_checked.answered()
    caller = owner_of(ctx.identity)
    if found is None or found.owner not in (caller, NOBODY):
        # OpenAI's own answer for an id it does not know: the same for another caller's,
        # so that a caller learns nothing of others' responses.
        shown = response_id if recordable(response_id) else "(not a response id)"
        raise BadRequestError(
            f"Previous response with id '{shown}' not found.",
            param=_PARAM,
            code="previous_response_not_found",
        )
    if (
        ctx.provider is not None
        and found.provider != ctx.provider
        # A response a fallback answered (and its provider stores) continues there, and
        # its continuation is counted there.
        and not (
            pin_to_fallback(ctx, primary, found.provider)
            if primary is not None
            else _count_at_fallback(ctx, found.provider)
        )
        # A model group's request: its member on that provider, whichever was drawn.
        and not _to_group_member(ctx, found.provider)
    ):
        # Another provider (account) has no such response: it would answer its own 404
        # after the quota counted the request. Said plainly instead, to its creator.
        raise BadRequestError(
            f"Previous response '{response_id}' is stored by provider '{found.provider}', "
            f"and model '{ctx.asked_model}' is served by provider '{ctx.provider}': continue it "
            "with a model of its own provider",
            param=_PARAM,
            code="previous_response_elsewhere",
        )
    ctx.stored_context_tokens = found.tokens
    ctx.stored_context_guarded = found.guarded


class ResponseRecordStage:
    """Response body: record who created a stored response, once its answer ends; or,
    for a stream cut before its end, when the request ends."""

    def response_body(
        self, ctx: RequestContext, out: PhaseOutput, chunk: bytes, end_of_stream: bool
    ) -> Awaitable[None] | None:
        owners = ctx.runtime.services.response_owners
        if owners is None or not ctx.completed:
            return None
        found = _to_record(ctx)
        if found is None:
            return None
        # Once: the chunks after a stream's terminal event find it recorded.
        ctx.owner_recorded = True
        return _record(ctx, owners, *found)

    def done(self, ctx: RequestContext) -> None:
        # A stream the client left before its end: the provider may keep the response
        # (its id came first), and it is the provider's to say whether it can be continued.
        # Nothing waits for this record: the request is over.
        owners = ctx.runtime.services.response_owners
        found = _to_record(ctx) if owners is not None else None
        if owners is None or found is None:
            return
        ctx.owner_recorded = True
        metrics = ctx.runtime.services.metrics
        owners.record_soon(
            *found,
            ctx.runtime.config.store.timeout_ms / 1000.0,
            lambda _: metrics.store_error("response_owner_record"),
        )


def _to_record(ctx: RequestContext) -> tuple[str, ResponseOwner] | None:
    """The response this request created, as its record, when it is one to record: a
    stored response the provider gave an id, not recorded yet."""
    route = ctx.route
    if route is None or route.api is not RouteApi.OPENAI_RESPONSES:
        return None
    if ctx.owner_recorded or no_answer(ctx.response_status) or ctx.provider is None:
        return None
    response_id = getattr(ctx.translator, "response_id", None)
    body = ctx.body
    if not isinstance(response_id, str) or body is None or body.get("store") is False:
        return None
    if not recordable(response_id):
        return None
    # Whether the client got the answer through the route's response guards, which the
    # provider's stored copy never went through (stages.stored_responses); or, for a
    # continuation, the earlier answer it builds on, which its input items hold as the
    # provider stored it.
    guarded = ctx.runtime.guardrails.guards_answers(route.name) or ctx.stored_context_guarded
    usage = ctx.usage
    if ctx.error is not None and not (ctx.usage_reported or ctx.usage_estimated):
        # A stream the provider failed (response.failed) is recorded as its end is read,
        # before done charges it (partial_usage): what it will be charged is its size.
        usage = usage_if_ended_now(ctx) or usage
    owner = ResponseOwner(owner_of(ctx.identity), ctx.provider, usage.total_tokens, guarded)
    return response_id, owner


async def _record(
    ctx: RequestContext, owners: ResponseOwners, response_id: str, owner: ResponseOwner
) -> None:
    runtime = ctx.runtime
    timeout_s = runtime.config.store.timeout_ms / 1000.0
    try:
        async with asyncio.timeout(timeout_s):
            await owners.record(response_id, owner)
    except asyncio.CancelledError:
        # The client left while the record was being written (Envoy ended the call). A
        # stream's client has had the id since its first event and may continue it: the
        # record is written off the request path, as for a stream left before its end.
        metrics = runtime.services.metrics
        owners.record_soon(
            response_id, owner, timeout_s, lambda _: metrics.store_error("response_owner_record")
        )
        raise
    except Exception as exc:
        runtime.services.metrics.store_error("response_owner_record")
        log.warning(
            "the owner of a stored response was not recorded (request %s): %s",
            ctx.request_id,
            type(exc).__name__,
        )

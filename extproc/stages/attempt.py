"""One attempt of a failover request, in the router's upstream filter chain.

Envoy runs this filter once per attempt, after it has picked the provider cluster for
the attempt. The endpoint's metadata names the provider; the chain the downstream stage
resolved when it admitted the request (a key it adds to the JSON body,
``headers.FAILOVER_CHAIN_KEY``) says which model that provider serves for this request,
and a second key (``headers.FAILOVER_REQUEST_KEY``) which API the client speaks
(OpenAI's chat completions, Responses API and its compaction, text completions or
embeddings, Anthropic's Messages API, Gemini's generateContent, Bedrock's Converse or
InvokeModel) with the client's headers that API's translation reads and, for the APIs
whose path names the operation, whether it streams (each attempt rewrites the path), for
the others the client's query (an earlier attempt's path, which Envoy replays, may have
lost it), and the model group or the alias the client asked for, if any (what the
attempt's own metrics and a translated answer name, as the request's). The stage then
does what the downstream stages do for a request without failover: translate and sign
the client's body for that provider, and translate the answer back to the client's API
(an OpenAI stream always with its usage, which the downstream filter counts and hides
from clients that did not ask for it; Claude's answers carry theirs). A Gemini or
Bedrock client's body goes to a provider of its own API as it would without failover,
under the attempt's model in the path and with the attempt's provider's token or
signature, and its answer comes back unchanged.
Logging, metrics and quotas stay downstream.

The answer names the chain member that served it in headers the downstream filter
reads and removes. The request's dynamic metadata names it too, from the moment the
attempt sends its request: an answer over ``envoy.max_response_body_bytes`` never
leaves this filter, and Envoy's own reply in its place carries that name instead
(``envoy_failover``), so the downstream filter still charges the member that answered.

An attempt whose provider's status is below 400 is named as started, in the request's
metadata under a key of its provider's (``envoy_failover.started_key``), by Envoy's Lua
filter beside this one as the answer's headers arrive (this filter's answer to them
could come too late: ``envoy_failover``): should its body then be cut (a reset, a stall
past the attempt's timeout), Envoy retries the next member, the provider billed the
answer all the same, and the failover route's header carries that name to the
downstream filter, which charges it (``stages.cut_answer``). An answer this filter's
translator turns into an error takes that name back: as without failover, an answer
turned into an error is not charged as one. A provider's own ``x-aigw-started`` header
is removed: a provider cannot name attempts to be charged. That is the only other
metadata an attempt gives Envoy: the attempt's own view of the request (a route of its
own, no caller) is not the request's.

An attempt on a fallback also names its provider in the store before its request leaves
(``store.attempts_in_flight``, under the key the gateway's note carries): should the client
hang up before any answer, the request's stream charges the member whose attempt was in
flight (``stages.attempt_in_flight``). The first attempt (the primary's) writes nothing, so
a request its primary serves pays no store round trip; a store that does not answer delays
an attempt by the store's timeout at most and fails nothing.

The chain travels with the request, so a config reload between two attempts
changes nothing of what the request is served as: the fallback it was admitted
with answers, under its name and price, on whichever worker takes the attempt.
Only the provider's credentials and signer come from the config serving the
attempt (they are secrets, never written into a request); a provider the reload
removed fails the attempt with a 502.

Which attempts a request may make is decided downstream, where the caller is
known (``failover_plan``): the chain of its model, less the fallbacks its
access rules keep from it, so an attempt never serves a model its caller may
not use, and less those that cannot answer the client's API (an Anthropic client's
fallback on an OpenAI-compatible provider: nothing translates Anthropic's Messages
API to OpenAI's; a Gemini client's anywhere but Google's models on Vertex; a Bedrock
client's anywhere but Bedrock, and for InvokeModel a model of another family than the
body's; a Responses API or text completions client's anywhere but an OpenAI-compatible
provider; an embeddings client's anywhere but the same model elsewhere), and less those
that cannot be sent this body (``serves_body``: what their provider's early checks or
translation would refuse), so an attempt's translation never refuses the client's body.

An attempt whose answer Envoy retries (429, 5xx) while a later member remains counts it
in ``aigw_upstream_errors_total`` (under the group or alias the client asked for, else
the chain's model): the downstream filter only ever sees the last attempt's answer. Envoy
decides by the status this filter hands it, the translated one: a provider's refusal of
the gateway's credentials (401, 403 from Anthropic, Bedrock or Vertex) becomes the
gateway's 502, an answer that cannot be translated a 502 too, so those are retried and
counted (under the provider's own status, as downstream), and a status translated to one
Envoy does not retry is the client's, counted downstream alone.

A provider's ``200`` whose body is its error (``translators.answer_errors``) is no
answer either: an overloaded provider that says so in a ``200`` must move the chain on
as its ``503`` or ``529`` would. Where the answer is translated, the translator already
replaces it with the error's status; passed through, while a later member remains, the
attempt hands Envoy that same status (the one its type stands for:
``anthropic_errors.typed_error``) when the status the type names is one Envoy retries,
and leaves the ``200`` as it came otherwise (a bad request's 400 would not be retried
either). The body does not matter: Envoy retries and drops it. Either way it is counted
as the error body it was (``error_body``), as downstream, and not charged. The last
member's ``200`` is the client's answer, as without failover.

The last member's error is counted and logged downstream, where only this filter's
translation of it arrives: where the translation changed the provider's status (529 to
503, a refused key's 401 to 502) or replaced its 200 with an error, the attempt reports
what the provider said (``attempt_report``), so the log line and the counter record it
as without failover.

Envoy replays one attempt's header changes into the next: each attempt removes every
provider credential an earlier one set, and an Anthropic client's ``anthropic-version``
and ``anthropic-beta`` (which a Vertex attempt rewrites, Vertex refusing flags it does
not know) come back as the client sent them, from the body, before they are translated;
an OpenAI chat client's ``anthropic-version`` too, which its translation for Claude
reads."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from extproc import headers
from extproc.attempt_report import AttemptReport, encode
from extproc.backends import (
    RequestPlan,
    check_translation,
    plan_request,
    plan_response,
    provider_api,
    same_embeddings_model,
    scrub_answer_error,
    serves_client_api,
    serves_invoke_body,
    sign_pending,
)
from extproc.config.model import RouteApi
from extproc.context import ModeOverride, PhaseOutput, RequestContext
from extproc.envoy_failover import (
    FAILOVER_APIS,
    HOST_METADATA_ATTRIBUTE,
    PRIMARY,
    STARTED,
    failover_cluster_name,
    pinned_cluster_name,
    started_key,
)
from extproc.envoy_messages import status_code
from extproc.errors import BadRequestError, UpstreamError
from extproc.headers import metadata_key
from extproc.model_groups import fails_provider
from extproc.runtime import Route, Runtime, Upstream
from extproc.stages.accounting import ERROR_BODY_STATUS
from extproc.store.attempts_in_flight import MAX_KEY_CHARS, AttemptsInFlight
from extproc.store.outage_log import OutageLog
from extproc.translators.answer_errors import ProviderAnswerError, answer_error
from extproc.translators.anthropic_errors import documented_status, typed_error
from extproc.translators.unreadable_answers import UnreadableAnswerError, replaced_error

# The route an attempt serves its request on, by the client's API: its own view of the
# request (no operator's route: guards, quotas and access rules stay downstream).
ATTEMPT_ROUTES = {api: Route("failover-attempt", api, None) for api in FAILOVER_APIS}
ATTEMPT_ROUTE = ATTEMPT_ROUTES[RouteApi.OPENAI_CHAT]
_ROUTES_BY_API = {api.value: route for api, route in ATTEMPT_ROUTES.items()}
# The client APIs whose path, not body, says whether the answer streams (Gemini's
# operation, Bedrock's): an earlier attempt rewrote the path, so the gateway's note
# carries it.
_STREAM_IN_PATH = frozenset(
    {RouteApi.GEMINI_GENERATE_CONTENT, RouteApi.BEDROCK_CONVERSE, RouteApi.BEDROCK_INVOKE}
)
# The client's headers an Anthropic client's attempts are translated with, which an
# earlier attempt may have changed (``anthropic-version`` is also removed as a
# credential header below: each provider's is its own).
_ANTHROPIC_CLIENT_HEADERS = ("anthropic-version", "anthropic-beta")
# The client's headers each client API's attempts restore: an OpenAI chat client's own
# ``anthropic-version`` decides what its translation for Claude refuses (sampling
# parameters beside thinking), as the admission check read it (``FailoverCheckStage``);
# no attempt rewrites its ``anthropic-beta``, which Envoy passes on as sent.
_CLIENT_HEADERS = {
    RouteApi.ANTHROPIC_MESSAGES: _ANTHROPIC_CLIENT_HEADERS,
    RouteApi.OPENAI_CHAT: ("anthropic-version",),
}
_ATTEMPT_CREDENTIALS = (
    *headers.CLIENT_CREDENTIAL_HEADERS,
    # A Vertex attempt's quota project must not bill the next attempt's provider.
    *headers.PROVIDER_ACCOUNT_HEADERS,
    "anthropic-version",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
)
# Envoy renders the host metadata attribute in protobuf text form.
_PROVIDER = re.compile(r'key: "provider" value \{ string_value: "([^"]*)"')
# The longest field name a skipped fallback's diagnostic quotes (a path into the body).
_LOGGED_PARAM_CHARS = 100
# The key of the gateway's note to the attempts under which each attempt on a fallback
# names itself in the store (store.attempts_in_flight).
_RECORD = "record"
# The key of the note naming the model group the client asked for, whose member's chain
# the attempts serve: the name an attempt's own metrics carry, as the request's do.
_GROUP = "group"
# The key of the note naming the name the client asked for the chain's model by, where it
# named no group and the chain's first member is not it (an alias; the primary's own
# name for a chain pinned to a fallback): what an attempt's own metrics carry and its
# translated answer names (Bedrock names no model), as the request's do. Without it, the
# name asked is the chain's first member's (``chain_model``), never the attempt's own.
_ASKED = "asked"

log = logging.getLogger(__name__)


def provider_of_attempt(attributes: Any) -> str | None:
    if not attributes:
        return None
    for struct in attributes.values():
        field = struct.fields.get(HOST_METADATA_ATTRIBUTE)
        if field is not None:
            found = _PROVIDER.search(field.string_value)
            return found.group(1) if found else None
    return None


@dataclass(frozen=True, slots=True)
class FailoverPlan:
    """Where a failover request goes: the chain's aggregate cluster, the members the
    attempts may serve, in order, as ``[provider, model, upstream model]`` (what goes in
    the body under ``headers.FAILOVER_CHAIN_KEY``), and what the client's request is
    (under ``headers.FAILOVER_REQUEST_KEY``)."""

    cluster: str
    chain: list[list[str]]
    request: dict[str, Any]


def fails_over(api: RouteApi) -> bool:
    """Whether requests of the client's ``api`` fail over along their model's chain."""
    return api in FAILOVER_APIS


def failover_plan(ctx: RequestContext) -> FailoverPlan:
    """The chain a failover request goes to: its primary's, less the fallbacks its caller
    may not use (a key's ``allowed_models``, access rules on the client's route), those
    of other providers than the one a route is kept to (``routes[].provider``), those
    that cannot answer the client's API (``backends.serves_client_api``) and those that
    cannot serve this very body (``serves_body``).

    An operator who kept a key from a model expects that to hold when the model would
    serve as a fallback too; skipped, not refused: the request asked for a model the
    caller may use, and without a fallback it gets that model's own answer. A fallback
    that cannot answer in the client's API, or cannot be sent this body (``n`` above 1
    for Claude, a ``json_object`` ``response_format`` for Claude or Bedrock, a forced tool call
    without tools for any translated provider), is skipped the same way: tried, it could
    only fail the request with a 400 the client never caused, or answer what the client
    did not ask for; and a fallback an operator adds must not make a request the primary
    serves fail. A skipped fallback is left out of the chain the attempts read too, so even an
    attempt Envoy sent there could not serve it.

    The primary was checked before the quota (``FailoverCheckStage``): a body it cannot
    be sent is the client's 400 there, in the client's shape, and never reaches Envoy's
    attempts.

    A request pinned to a fallback (its ``ctx.provider`` is that fallback's, set by
    ``stages.response_owner`` for a response that provider stores) goes to that member
    alone, through the chain's pinned route."""
    primary = ctx.failover_model
    route = ctx.route
    assert primary is not None and route is not None
    # The chain in order, the primary first: Runtime.failover is built in that order, one
    # member per provider (the config refuses two on one provider).
    members = list(ctx.runtime.failover[primary].values())
    pinned = pinned_to(ctx, members)
    if pinned is not None:
        # Only that member holds what the request builds on (stages.response_owner).
        name, up = members[pinned + 1]
        chain = [[up.provider.name, name, up.upstream_model]]
        return FailoverPlan(
            pinned_cluster_name(primary, pinned), chain, client_request(ctx, first=name)
        )
    skipped = [
        position
        for position, (name, upstream) in enumerate(members[1:])
        if not serves_request(ctx, upstream)
        # A route kept to one provider refuses another's models by name: not served
        # through its failover either.
        or (route.provider is not None and upstream.provider.name != route.provider)
        or ctx.runtime.access.denial(
            ctx.identity, name, route.name, ctx.runtime.group_asked(ctx.model_group, name)
        )
        is not None
        or credentials_pending_for(upstream)
        # Last: the only check that reads the body, and the only one that logs.
        or not serves_body(ctx, name, upstream)
    ]
    kept = [member for i, member in enumerate(members) if i == 0 or i - 1 not in skipped]
    chain = [[up.provider.name, name, up.upstream_model] for name, up in kept]
    if credentials_pending_for(members[0][1]) and len(kept) > 1:
        # Its attempt could only end in the gateway's 503, which Envoy would not retry:
        # the chain's route without it (envoy_failover.skippable_members). It stays in
        # the chain the attempts read, which names the chain's model by its primary.
        skipped = [PRIMARY, *skipped]
    return FailoverPlan(
        failover_cluster_name(primary, skipped), chain, client_request(ctx, first=primary)
    )


def recorded(ctx: RequestContext, plan: FailoverPlan) -> FailoverPlan:
    """``plan``, with a key of the request's own under which its attempts on fallbacks
    name themselves in the store as they are sent (``store.attempts_in_flight``), kept on
    the context for a client that hangs up before any answer (``stages.attempt_in_flight``).
    A chain of one member needs none: its attempt is that member's."""
    if len(plan.chain) < 2 or ctx.runtime.services.attempts_in_flight is None:
        return plan
    ctx.attempts_key = uuid.uuid4().hex
    return replace(plan, request={**plan.request, _RECORD: ctx.attempts_key})


def pinned_to(ctx: RequestContext, members: list[tuple[str, Upstream]]) -> int | None:
    """The position of the fallback a request is pinned to (0 is the first), if any."""
    return next(
        (i for i, (_, up) in enumerate(members[1:]) if up.provider.name == ctx.provider), None
    )


class FailoverCheckStage:
    """Before the quota: a body a failover request's primary cannot be sent (what its
    provider's translation refuses beyond ``backends.check_pair``: ``n`` or log
    probabilities for Claude...) is the client's 400, as a request limit counts no other
    400 the gateway gives before a provider is asked. After the guards, which may change
    the body (a route's enrichment opening a conversation for Converse), as the
    translation without fallbacks reads it. A request pinned to a fallback is that
    member's alone, checked by its own attempt."""

    def request_body(self, ctx: RequestContext, out: PhaseOutput, body: bytes) -> None:
        primary = ctx.failover_model
        if primary is None or ctx.body is None:
            return
        members = list(ctx.runtime.failover[primary].values())
        if pinned_to(ctx, members) is None:
            check_translation(ctx, ctx.body, members[0][1])


def credentials_pending_for(fallback: Upstream) -> bool:
    """Whether the fallback's provider has no credentials yet, its source out of reach
    since its config loaded (providers.credentials_pending): an attempt there would end
    in the gateway's own 503, which Envoy takes for the request's answer, not for a
    failure to retry on the next member."""
    fetched = fallback.signer or fallback.token_source
    return fetched is not None and fetched.pending


def serves_request(ctx: RequestContext, fallback: Upstream) -> bool:
    """Whether ``fallback`` can answer this client's request: its API
    (``backends.serves_client_api``), for InvokeModel its body, which is one model
    family's (``backends.serves_invoke_body``), and for embeddings the very model the
    request named, whose vectors alone compare (``backends.same_embeddings_model``)."""
    route = ctx.route
    assert route is not None
    if not serves_client_api(route.api, fallback):
        return False
    if route.api is RouteApi.BEDROCK_INVOKE:
        named = ctx.upstream_model or ""
        return serves_invoke_body(ctx.body or {}, named, fallback.upstream_model)
    if route.api is RouteApi.OPENAI_EMBEDDINGS:
        return ctx.upstream is not None and same_embeddings_model(ctx.upstream, fallback)
    return True


def serves_body(ctx: RequestContext, name: str, fallback: Upstream) -> bool:
    """Whether the fallback ``name`` can be sent this request's body as it would be were
    the request its own (``backends.check_translation``). One that cannot is named on
    the gateway's diagnostic log, with the request and the field it refuses (never the
    body's content), so an operator can tell why a request did not fail over there."""
    try:
        check_translation(ctx, ctx.body or {}, fallback)
    except BadRequestError as refused:
        log.info(
            "request %s: fallback '%s' of '%s' skipped: provider '%s' cannot serve its %s",
            ctx.request_id,
            name,
            ctx.failover_model,
            fallback.provider.name,
            f"'{refused.param[:_LOGGED_PARAM_CHARS]}'" if refused.param else "body",
        )
        return False
    return True


def client_request(ctx: RequestContext, first: str) -> dict[str, Any]:
    """What the attempts need to know of the client's request besides its body: its API,
    the client's own headers its translation reads (``_CLIENT_HEADERS``), for the APIs whose
    path names the operation whether it streams, for the others the client's query."""
    route = ctx.route
    assert route is not None
    carried: dict[str, str] = {}
    for name in _CLIENT_HEADERS.get(route.api, ()):
        value = ctx.request_headers.get(name)
        if value is not None:
            carried[name] = value
    request: dict[str, Any] = {"api": route.api.value, "headers": carried}
    if ctx.model_group is not None:
        request[_GROUP] = ctx.model_group
    elif ctx.model is not None and ctx.model != first:
        # An alias, or the primary's own name for a chain pinned to a fallback: the name
        # the chain's first member (``first``, which the attempts read) is not.
        request[_ASKED] = ctx.model
    if route.api in _STREAM_IN_PATH:
        request["stream"] = ctx.stream
    else:
        # The query each attempt passes on (the Anthropic SDK's ``?beta=true``): an
        # earlier attempt's path, which Envoy replays, may have lost it (Vertex's).
        query = ctx.path.partition("?")[2]
        if query:
            request["query"] = query
    return request


@dataclass(frozen=True, slots=True)
class AttemptRequest:
    """The client's request as an attempt serves it (``attempt_request``): the route of
    its API, the client's headers to restore, and whether it streams when its path says
    so (None: the body says)."""

    route: Route
    headers: dict[str, str]
    stream: bool | None = None
    # The client's query (empty: none), for an API whose path the attempt builds anew.
    query: str = ""
    # Where an attempt on a fallback names itself in the store (None: nowhere).
    record: str | None = None
    # The model group the client asked for (None: it named none).
    group: str | None = None
    # The name the client asked for the chain's model by, where the chain's first member
    # is not it (None: it named a group, or asked by that member's name).
    asked: str | None = None


def attempt_request(request: object) -> AttemptRequest:
    """The route an attempt serves the client's request on, the client's headers it
    restores and, for an API whose path names the operation, whether the request
    streams, from what the gateway wrote (``client_request``). A body without it is an
    OpenAI chat completion's, as every attempt's was before the key existed; one the
    gateway did not write is refused (502), never guessed at."""
    if request is None:
        return AttemptRequest(ATTEMPT_ROUTE, {})
    api = request.get("api") if isinstance(request, dict) else None
    carried = request.get("headers") if isinstance(request, dict) else None
    stream = request.get("stream") if isinstance(request, dict) else None
    query = request.get("query", "") if isinstance(request, dict) else ""
    record = request.get(_RECORD) if isinstance(request, dict) else None
    group = request.get(_GROUP) if isinstance(request, dict) else None
    asked = request.get(_ASKED) if isinstance(request, dict) else None
    route = _ROUTES_BY_API.get(api) if isinstance(api, str) else None
    if (
        route is None
        or not isinstance(query, str)
        or not (record is None or (isinstance(record, str) and len(record) <= MAX_KEY_CHARS))
        or not (group is None or isinstance(group, str))
        or not (asked is None or isinstance(asked, str))
        or not isinstance(carried, dict)
        or not all(isinstance(value, str) for value in carried.values())
        or (route.api in _STREAM_IN_PATH) is not isinstance(stream, bool)
    ):
        raise UpstreamError(
            "this request's failover attempt names no client API the gateway fails over",
            code="failover_misrouted",
        )
    in_path = stream if isinstance(stream, bool) else None
    carried_headers = {str(name): value for name, value in carried.items()}
    return AttemptRequest(route, carried_headers, in_path, query, record, group, asked)


def chain_member(chain: object, provider: str) -> tuple[str, str] | None:
    """The (model, upstream model) ``provider`` serves in the request's ``chain``; None
    when the chain names no such member (or is not one the gateway wrote)."""
    if not isinstance(chain, list):
        return None
    for member in chain:
        if (
            isinstance(member, list)
            and len(member) == 3
            and all(isinstance(part, str) for part in member)
            and member[0] == provider
        ):
            return member[1], member[2]
    return None


def current_upstream(runtime: Runtime, provider: str, upstream_model: str) -> Upstream | None:
    """How to reach ``provider`` with the config serving this attempt, asking it for
    ``upstream_model``: the provider's credentials, signer and endpoint are the running
    config's (a rotated key applies at once), the model the request's own. None when
    that config has no such provider."""
    upstream = runtime.provider_upstreams.get(provider)
    return None if upstream is None else replace(upstream, upstream_model=upstream_model)


def attempt_target(ctx: RequestContext, chain: object) -> tuple[str, Upstream]:
    """The model this attempt serves and how to reach its provider; a 502 when it cannot
    be served as the request was admitted."""
    provider = ctx.provider or ""
    member = chain_member(chain, provider)
    if member is None:
        raise UpstreamError(
            f"this request's failover chain has no member on provider '{provider}'",
            code="failover_misrouted",
        )
    model, upstream_model = member
    upstream = current_upstream(ctx.runtime, provider, upstream_model)
    if upstream is None:
        raise UpstreamError(
            f"provider '{provider}' of fallback '{model}' was removed from the "
            "configuration while this request was in flight",
            code="failover_provider_removed",
        )
    return model, upstream


def retried_to(chain: object, provider: str) -> str | None:
    """The chain's primary model when a member after ``provider``'s remains (Envoy
    retries a failed attempt there), else None: the last attempt's answer is the
    client's, whatever its status."""
    if not isinstance(chain, list) or not chain:
        return None
    providers = [member[0] if isinstance(member, list) and member else None for member in chain]
    if provider not in providers or providers.index(provider) == len(chain) - 1:
        return None
    return chain_model(chain)


def chain_model(chain: object) -> str | None:
    """The name of the chain's first member (its primary, or the one member it was pinned
    to); None for a chain the gateway did not write."""
    first = chain[0] if isinstance(chain, list) and chain else None
    name = first[1] if isinstance(first, list) and len(first) > 1 else None
    return name if isinstance(name, str) else None


def first_member(chain: object, provider: str) -> bool:
    """Whether ``provider`` serves the first member of the request's ``chain`` (its
    primary, or the one member it was pinned to): Envoy sends it the first attempt."""
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], list):
        return False
    return bool(chain[0] and chain[0][0] == provider)


def retried(status: int) -> bool:
    """Whether Envoy retries an attempt answered ``status`` (the failover route's
    ``retry_on``: 5xx and 429)."""
    return status == 429 or status >= 500


def _send(
    ctx: RequestContext,
    out: PhaseOutput,
    parsed: dict[str, Any],
    plan: RequestPlan,
    restored: dict[str, str | None],
) -> None:
    """Send the attempt to its provider as ``plan`` says, the client's headers restored."""
    upstream = ctx.upstream
    assert upstream is not None
    sent = plan.body if plan.body is not None else orjson.dumps(parsed)
    out.body = sent
    out.set_headers["content-length"] = str(len(sent))
    out.set_headers[":path"] = plan.path
    out.set_headers[":authority"] = upstream.provider.authority
    # The client's headers as it sent them, then the provider's own (a Vertex attempt
    # keeps only the beta flags Vertex knows): one change per header, none both set
    # and removed.
    changed = {**restored, **plan.headers, **dict.fromkeys(plan.remove_headers)}
    for name, value in changed.items():
        if value is None:
            out.remove_headers.append(name)
        else:
            out.set_headers[name] = value
    # Envoy merges it into the request's metadata before this attempt's request
    # leaves, so a later attempt overwrites it: it names the attempt last sent, for
    # Envoy's reply should this one's answer outgrow the buffer (envoy_failover).
    out.metadata = {metadata_key(name): value for name, value in answered_by(ctx).items()}


def answered_by(ctx: RequestContext) -> dict[str, str]:
    """The headers that name the chain member this attempt serves, for the downstream
    filter (``envoy_failover.ANSWERED_HEADERS``)."""
    named = {
        headers.ANSWERED_BY_PROVIDER: ctx.provider or "",
        headers.ANSWERED_BY_MODEL: ctx.model or "",
    }
    if ctx.upstream is not None:
        named[headers.ANSWERED_UPSTREAM_MODEL] = ctx.upstream.upstream_model
    return named


def restore_client_headers(ctx: RequestContext, carried: dict[str, str]) -> dict[str, str | None]:
    """Put back the client's own headers its API's translation reads, as the client sent
    them (an earlier attempt's changes replayed by Envoy undone), in the request this
    attempt reads and in the one it sends: each name with its value, or None for one the
    client did not send (``_CLIENT_HEADERS``)."""
    route = ctx.route
    if route is None:
        return {}
    restored: dict[str, str | None] = {}
    for name in _CLIENT_HEADERS.get(route.api, ()):
        value = carried.get(name)
        if value is None:
            ctx.request_headers.pop(name, None)
        else:
            ctx.request_headers[name] = value
        restored[name] = value
    return restored


class AttemptStage:
    def __init__(self) -> None:
        self._not_recorded = OutageLog(log, "failover attempts not recorded in the store")

    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> None:
        # Which model this provider serves is read from the body (request_body).
        ctx.provider = provider_of_attempt(ctx.attributes)
        ctx.route = ATTEMPT_ROUTE
        # The id the answer's translation names the completion after.
        ctx.request_id = ctx.request_headers.get(headers.REQUEST_ID) or str(uuid.uuid4())
        # Envoy replays an attempt's header changes into the next attempt: drop every
        # provider credential an earlier attempt set, before this one sets its own,
        # and forget them here too, so this attempt's own are set, not taken as there.
        out.remove_headers.extend(_ATTEMPT_CREDENTIALS)
        for name in _ATTEMPT_CREDENTIALS:
            ctx.request_headers.pop(name, None)

    def request_body(
        self, ctx: RequestContext, out: PhaseOutput, body: bytes
    ) -> Awaitable[None] | None:
        parsed: dict[str, Any] = orjson.loads(body)  # validated downstream
        # The chain and the request's API are the gateway's notes to itself: they never
        # reach a provider, so the body is always written anew.
        chain = parsed.pop(headers.FAILOVER_CHAIN_KEY, None)
        request = parsed.pop(headers.FAILOVER_REQUEST_KEY, None)
        ctx.body_changed = True
        client = attempt_request(request)
        ctx.route = client.route
        if client.route.api not in _STREAM_IN_PATH:
            # The client's query, whatever an earlier attempt's path (replayed) kept of it.
            ctx.path = ctx.path.partition("?")[0] + (f"?{client.query}" if client.query else "")
        ctx.model, upstream = attempt_target(ctx, chain)
        # The group or the name the client asked for: what this attempt's metrics name,
        # and a translated answer (Bedrock's) names, as without failover.
        ctx.model_group = client.group
        ctx.model_asked = client.asked or chain_model(chain)
        if not serves_client_api(client.route.api, upstream):
            # The gateway's chain keeps no such member (failover_plan): not its note.
            raise UpstreamError(
                f"provider '{ctx.provider}' cannot answer this request's {client.route.api}",
                code="failover_misrouted",
            )
        # Set while a later member may still answer: this attempt's failure is then no
        # answer to the client (response_headers counts it as the upstream error it is).
        ctx.failover_model = retried_to(chain, ctx.provider or "")
        ctx.upstream = upstream
        ctx.upstream_model = upstream.upstream_model
        ctx.provider_type = upstream.provider.type
        ctx.provider_api = provider_api(upstream)
        if client.stream is None:
            ctx.stream = parsed.get("stream") is True
        else:
            # The operation is the path's: the body the client sent is the provider's own,
            # which the answer's reader consults (an InvokeModel body's family, Gemini's
            # candidates).
            ctx.stream = client.stream
            ctx.body = parsed
        if client.route.api is RouteApi.OPENAI_EMBEDDINGS:
            # A Bedrock answer's translation reads the client's texts and encoding.
            ctx.body = parsed
        restored = restore_client_headers(ctx, client.headers)
        plan = plan_request(ctx, parsed, upstream)
        records = ctx.runtime.services.attempts_in_flight
        record = client.record
        if records is None or first_member(chain, ctx.provider or ""):
            # The first attempt writes nothing: no record names it (a request its primary
            # answers, the common case, pays no store round trip for this).
            record = None
        if plan.signature is not None:
            # A large body to AWS: hashed in a thread, then sent (Envoy waits for it).
            return self._send_signed(ctx, out, parsed, plan, restored, record)
        _send(ctx, out, parsed, plan, restored)
        if record is None or records is None:
            return None
        return self._record_sent(ctx, records, record)

    async def _send_signed(
        self,
        ctx: RequestContext,
        out: PhaseOutput,
        parsed: dict[str, Any],
        plan: RequestPlan,
        restored: dict[str, str | None],
        record: str | None,
    ) -> None:
        await sign_pending(plan)
        _send(ctx, out, parsed, plan, restored)
        records = ctx.runtime.services.attempts_in_flight
        if record is not None and records is not None:
            await self._record_sent(ctx, records, record)

    async def _record_sent(self, ctx: RequestContext, records: AttemptsInFlight, key: str) -> None:
        """Name this attempt in the store as the request's attempt in flight, before its
        request leaves (Envoy waits for this answer): should the client hang up before
        any answer, the request's stream charges this member, whose provider received
        the request and bills it (stages.attempt_in_flight). A store that does not answer
        delays the attempt by its timeout at most, and fails nothing: such a hang-up is
        then charged at the primary."""
        runtime = ctx.runtime
        try:
            async with asyncio.timeout(runtime.config.store.timeout_ms / 1000.0):
                await records.sent(key, ctx.provider or "", runtime.attempt_record_ttl_s)
        except Exception as exc:
            runtime.services.metrics.store_error("attempt_record")
            self._not_recorded.failed(exc)
            return
        self._not_recorded.answered()

    def response_headers(
        self, ctx: RequestContext, out: PhaseOutput, response_headers: dict[str, str]
    ) -> None:
        status = response_headers.get(":status", "0")
        ctx.response_status = ctx.upstream_status = status_code(status)
        # Only the gateway names the attempts that started, and reports what a provider
        # said (attempt_report): never the provider.
        out.remove_headers.append(STARTED)
        if ctx.provider_api is None:
            out.remove_headers.append(headers.ATTEMPT_UPSTREAM)
            self._count_if_retried(ctx, ctx.response_status, status)
            return
        # Keep the usage chunk: the downstream filter counts it and hides it from
        # clients that did not ask for it.
        ctx.client_wants_usage = True
        plan = plan_response(
            ctx, ctx.response_status, response_headers, ctx.provider_api, from_provider=True
        )
        ctx.translator = plan.translator
        if plan.streamed:
            out.mode_override = ModeOverride(response_body="STREAMED")
        out.set_headers.update(plan.set_headers)
        out.remove_headers.extend(plan.remove_headers)
        # Overwrites any the provider sent: only the gateway names who answered.
        out.set_headers.update(answered_by(ctx))
        # Envoy's router decides by the status this filter hands it, the translated one
        # (a refused credential's 401 from Anthropic, Bedrock or Vertex is the gateway's
        # 502, Bedrock's 408 a 504): counted by the provider's own, as downstream.
        handed = out.set_headers.get(":status", status)
        if handed != status:
            # Should this be the last attempt, the downstream filter records the
            # provider's status, as without failover (Anthropic's 529, not the 503).
            out.set_headers[headers.ATTEMPT_UPSTREAM] = encode(AttemptReport(ctx.upstream_status))
        else:
            out.remove_headers.append(headers.ATTEMPT_UPSTREAM)
        self._count_if_retried(ctx, status_code(handed), status)

    def response_body(
        self, ctx: RequestContext, out: PhaseOutput, chunk: bytes, end_of_stream: bool
    ) -> None:
        if ctx.translator is None:
            return
        translator = ctx.translator
        replaced = translator.feed(chunk, end_of_stream)
        if replaced is not None:
            out.body = replaced
        if translator.status is not None:
            # An answer that could not be translated: the error's status, not the 200
            # (labelled the client's, as downstream; a provider's error in its 200 as
            # that, as downstream too).
            replacing = replaced_error(translator)
            label = (
                ERROR_BODY_STATUS
                if isinstance(replacing, ProviderAnswerError)
                else str(translator.status)
            )
            self._no_answer(ctx, out, translator.status, label)
            if replacing is not None:
                self._report(ctx, out, replacing)
        elif end_of_stream and ctx.failover_model is not None:
            # A 200 passed through whose body is the provider's error, while a later
            # member remains: handed to Envoy with the status its error stands for, so a
            # chain moves on as it would after that status (module docstring).
            error = error_in_success(ctx)
            if error is not None and retried(documented_status(error.error_type, error.code)):
                handed = typed_error(error.error_type, error.message, error.code).status
                self._no_answer(ctx, out, handed, ERROR_BODY_STATUS)
        if end_of_stream:
            ctx.completed = True

    def _no_answer(self, ctx: RequestContext, out: PhaseOutput, status: int, label: str) -> None:
        """Hand Envoy ``status`` for this attempt's 200, which was no answer. Not charged
        as one should Envoy retry it: the name Envoy wrote at its 200 is taken back (an
        empty one renders as none in the failover route's header). Envoy held the headers
        for the whole body: it retries an error status, which no client sees."""
        ctx.response_status = status
        out.set_headers[":status"] = str(status)
        # One larger, decoded, than the gateway buffers (answer_encoding) was an answer,
        # billed whole: its name stays, charged as a cut attempt.
        if ctx.provider is not None and not getattr(ctx.translator, "too_large", False):
            out.metadata = {started_key(ctx.provider): ""}
        self._count_if_retried(ctx, status, label)

    @staticmethod
    def _report(
        ctx: RequestContext, out: PhaseOutput, error: ProviderAnswerError | UnreadableAnswerError
    ) -> None:
        """Tell the downstream filter the error that replaced the provider's success
        answer: should this be the last attempt, its log line names it and
        aigw_upstream_errors_total counts it as without failover (attempt_report). The
        provider's words lose the gateway's credentials first, as downstream."""
        if isinstance(error, ProviderAnswerError):
            scrub_answer_error(ctx, error)
        report = AttemptReport(ctx.upstream_status or 0, error)
        out.set_headers[headers.ATTEMPT_UPSTREAM] = encode(report)

    @staticmethod
    def _count_if_retried(ctx: RequestContext, handed: int, label: str) -> None:
        """Count an error Envoy retries on the next member (``handed``: the status this
        filter gives Envoy's router) in aigw_upstream_errors_total, as the provider's
        ``label``: the downstream filter never sees it. The last member's error is the
        client's answer, counted there (``ctx.failover_model`` is None then)."""
        if ctx.failover_model is None or not retried(handed):
            return
        # Under the model the request's own series name: its group or alias, else its
        # chain's.
        ctx.runtime.services.metrics.upstream_error(
            provider=ctx.provider or "",
            model=ctx.model_group or ctx.model_asked or ctx.failover_model,
            status=label,
        )
        if ctx.provider is not None and label.isdigit() and fails_provider(int(label)):
            # A model group passes its member on this provider over for a while.
            ctx.runtime.services.balancer.provider_failed(ctx.provider)
        # Once: a later phase of this attempt (an untranslatable body) is the same error.
        ctx.failover_model = None


def error_in_success(ctx: RequestContext) -> ProviderAnswerError | None:
    """The provider's error a whole success answer of this attempt was, unbilled (no
    usage report beside it: ``translators.answer_errors``); None for an answer."""
    translator = ctx.translator
    if translator is None or not 200 <= ctx.response_status < 300:
        return None
    if translator.usage is not None:
        return None  # billed: an answer, whatever it also says (a Responses failed)
    return answer_error(translator)


def attempt_stages() -> list[object]:
    return [AttemptStage()]

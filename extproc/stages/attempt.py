"""One attempt of a failover request, in the router's upstream filter chain.

Envoy runs this filter once per attempt, after it has picked the provider
cluster for the attempt. The endpoint's metadata names the provider; the
primary model (a header the downstream stage set) names the chain; together
they say which model this attempt asks for. The stage then does what the
downstream stages do for a request without failover: translate and sign the
client's body for that provider, and translate the answer back to OpenAI's API
(always with its usage, which the downstream filter counts and hides from
clients that did not ask for it). Logging, metrics and quotas stay downstream.

Which attempts a request may make is decided downstream, where the caller is
known (``failover_cluster``): the chain of its model, less the fallbacks its
access rules keep from it, so an attempt never serves a model its caller may
not use.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

from extproc import headers
from extproc.backends import plan_request, plan_response
from extproc.config.model import RouteApi
from extproc.context import ModeOverride, PhaseOutput, RequestContext
from extproc.envoy_failover import HOST_METADATA_ATTRIBUTE, failover_cluster_name
from extproc.errors import UpstreamError
from extproc.runtime import Route

ATTEMPT_ROUTE = Route("failover-attempt", RouteApi.OPENAI_CHAT, None)
_ATTEMPT_CREDENTIALS = (
    *headers.CLIENT_CREDENTIAL_HEADERS,
    "anthropic-version",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
)
# Envoy renders the host metadata attribute in protobuf text form.
_PROVIDER = re.compile(r'key: "provider" value \{ string_value: "([^"]*)"')


def provider_of_attempt(attributes: Any) -> str | None:
    if not attributes:
        return None
    for struct in attributes.values():
        field = struct.fields.get(HOST_METADATA_ATTRIBUTE)
        if field is not None:
            found = _PROVIDER.search(field.string_value)
            return found.group(1) if found else None
    return None


def failover_cluster(ctx: RequestContext) -> str:
    """The chain a failover request goes to: its primary's, less the fallbacks its caller
    may not use (a key's ``allowed_models``, access rules on the client's route).

    An operator who kept a key from a model expects that to hold when the model would
    serve as a fallback too; skipped, not refused: the request asked for a model the
    caller may use, and without a fallback it gets that model's own answer."""
    primary = ctx.failover_model
    route = ctx.route
    assert primary is not None and route is not None
    # The chain in order, the primary first: Runtime.failover is built in that order, one
    # member per provider (the config refuses two on one provider).
    fallbacks = [name for name, _ in ctx.runtime.failover[primary].values()][1:]
    skipped = [
        position
        for position, name in enumerate(fallbacks)
        if ctx.runtime.access.denial(ctx.identity, name, route.name) is not None
    ]
    return failover_cluster_name(primary, skipped)


class AttemptStage:
    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> None:
        provider = provider_of_attempt(ctx.attributes)
        primary = ctx.request_headers.get(headers.FAILOVER_MODEL, "")
        member = ctx.runtime.failover.get(primary, {}).get(provider or "")
        if member is None:
            raise UpstreamError(
                f"no fallback of '{primary}' is served by provider '{provider}'",
                code="failover_misrouted",
            )
        ctx.model, ctx.upstream = member
        ctx.route = ATTEMPT_ROUTE
        ctx.provider = member[1].provider.name
        ctx.provider_type = member[1].provider.type
        # The id the answer's translation names the completion after.
        ctx.request_id = ctx.request_headers.get(headers.REQUEST_ID) or str(uuid.uuid4())
        # Envoy replays an attempt's header changes into the next attempt: drop every
        # provider credential an earlier attempt set, before this one sets its own,
        # and forget them here too, so this attempt's own are set, not taken as there.
        out.remove_headers.extend(_ATTEMPT_CREDENTIALS)
        for name in _ATTEMPT_CREDENTIALS:
            ctx.request_headers.pop(name, None)

    def request_body(self, ctx: RequestContext, out: PhaseOutput, body: bytes) -> None:
        upstream = ctx.upstream
        if upstream is None:
            return
        parsed: dict[str, Any] = orjson.loads(body)  # validated downstream
        ctx.stream = parsed.get("stream") is True
        plan = plan_request(ctx, parsed, upstream)
        sent = plan.body if plan.body is not None else body
        if plan.body is not None:
            out.body = plan.body
        out.set_headers["content-length"] = str(len(sent))
        out.set_headers[":path"] = plan.path
        out.set_headers[":authority"] = upstream.provider.authority
        out.set_headers.update(plan.headers)

    def response_headers(
        self, ctx: RequestContext, out: PhaseOutput, response_headers: dict[str, str]
    ) -> None:
        status = response_headers.get(":status", "0")
        ctx.response_status = int(status) if status.isdigit() else 0
        if ctx.provider_type is None:
            return
        # Keep the usage chunk: the downstream filter counts it and hides it from
        # clients that did not ask for it.
        ctx.client_wants_usage = True
        plan = plan_response(
            ctx, ctx.response_status, response_headers, ctx.provider_type, from_provider=True
        )
        ctx.translator = plan.translator
        if plan.streamed:
            out.mode_override = ModeOverride(response_body="STREAMED")
        out.set_headers.update(plan.set_headers)
        out.remove_headers.extend(plan.remove_headers)
        out.set_headers[headers.ANSWERED_BY_PROVIDER] = ctx.provider or ""
        out.set_headers[headers.ANSWERED_BY_MODEL] = ctx.model or ""
        if ctx.upstream is not None:
            out.set_headers[headers.ANSWERED_UPSTREAM_MODEL] = ctx.upstream.upstream_model

    def response_body(
        self, ctx: RequestContext, out: PhaseOutput, chunk: bytes, end_of_stream: bool
    ) -> None:
        if ctx.translator is None:
            return
        replaced = ctx.translator.feed(chunk, end_of_stream)
        if replaced is not None:
            out.body = replaced
        if ctx.translator.status is not None:
            # An answer that could not be translated: the error's status, not the 200.
            ctx.response_status = ctx.translator.status
            out.set_headers[":status"] = str(ctx.translator.status)
        if end_of_stream:
            ctx.completed = True


def attempt_stages() -> list[object]:
    return [AttemptStage()]

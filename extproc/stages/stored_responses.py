"""A stored Responses API response, by its id: served to the caller who created it alone.

``GET /v1/responses/{id}`` (retrieve), ``DELETE /v1/responses/{id}``, ``GET
/v1/responses/{id}/input_items`` and ``POST /v1/responses/{id}/cancel`` name no model:
the provider that stores the response is the one the gateway recorded when it passed
through (``store.response_owners``), and so is the caller who created it. A response
whose record is missing or names another caller is OpenAI's own 404 for an id it does
not know, the same either way, so nobody learns which ids exist. Otherwise the request
goes to that provider's endpoint with the provider's credential, the query (``include``,
``limit``, ``after``, ``order``) as the client sent it. A response whose answer the
creating route's guards checked is not read back (403 ``stored_response_guarded``): the
provider stores it unguarded, and nothing here guards it; it may still be deleted.

Nothing here is generated, so nothing is billed, reserved or counted as tokens: a
retrieved response carries the usage it was billed for, which must not be billed again.
The answer is passed through as it came, except a provider's refusal of the gateway's
own credential, which becomes the gateway's ``upstream_credentials_refused`` as on every
route (it would name a piece of the provider's key). A deletion the provider confirmed
(or a response it no longer has) forgets the record.

The lookup is one store command in the request-headers phase; a deletion's is one more
in the response-headers phase. A store that cannot answer is a 503 whatever
``quotas.on_store_failure`` says: without the record there is neither an owner to check
nor a provider to ask.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

from extproc import headers
from extproc.backends import CREDENTIAL_REFUSALS, refused_body
from extproc.config.model import ProviderType, RouteApi
from extproc.context import PhaseOutput, RequestContext
from extproc.envoy_messages import status_code
from extproc.errors import (
    MethodNotAllowedError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from extproc.store.response_owners import NOBODY, ResponseOwners, owner_of, recordable

# What may follow the id, and the methods each takes.
_METHODS = {"": ("GET", "DELETE"), "input_items": ("GET",), "cancel": ("POST",)}
JSON_HEADERS = {"content-type": "application/json"}


@dataclass(slots=True)
class StoredResponseCall:
    """What a request to a stored response is about, for its response phases."""

    response_id: str
    # A provider's refusal of the gateway's credential, whose body the gateway replaces.
    refused: bool = False


class _ResponseNotFoundError(NotFoundError):
    # OpenAI's 404 for a response id it does not know is an invalid_request_error.
    error_type = "invalid_request_error"


class StoredResponseStage:
    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> Awaitable[None] | None:
        route = ctx.route
        if route is None or route.api is not RouteApi.OPENAI_RESPONSES_STORED:
            return None
        path, _, query = ctx.path.partition("?")
        response_id, action = _target(path, route.prefix)
        allowed = _METHODS[action]
        if ctx.method not in allowed:
            raise MethodNotAllowedError(
                f"{ctx.method} is not allowed on {path}; use {' or '.join(allowed)}",
                headers={"allow": ", ".join(allowed)},
            )
        owners = ctx.runtime.services.response_owners
        if owners is None:
            # No records (store.response_owner_retention_days: 0): whose a response is
            # cannot be told, so none is served.
            raise NotFoundError(
                "stored responses are not served by this gateway", code="route_not_found"
            )
        return _send_to_provider(ctx, out, owners, response_id, action, query)

    def response_headers(
        self, ctx: RequestContext, out: PhaseOutput, response_headers: dict[str, str]
    ) -> Awaitable[None] | None:
        call = ctx.stored_response
        if call is None:
            return None
        status = response_headers.get(":status", "")
        if status_code(status) in CREDENTIAL_REFUSALS:
            call.refused = True
            out.set_headers.update(JSON_HEADERS)
            # The body becomes the gateway's own plain JSON, whatever encoded the provider's.
            out.remove_headers.extend(("content-length", "content-encoding"))
            return None
        owners = ctx.runtime.services.response_owners
        deleted = ctx.method == "DELETE" and (status.startswith("2") or status == "404")
        if owners is None or not deleted:
            return None
        return _forget(ctx, owners, call.response_id)

    def response_body(
        self, ctx: RequestContext, out: PhaseOutput, chunk: bytes, end_of_stream: bool
    ) -> None:
        call = ctx.stored_response
        if call is None or not call.refused:
            return
        # Buffered: the whole error comes in one message, the one that ends the answer.
        if not end_of_stream:
            out.body = b""
            return
        upstream = ctx.runtime.provider_upstreams.get(ctx.provider or "")
        out.body = refused_body(chunk, ctx.response_status, upstream, ctx.error_shape)


def _target(path: str, prefix: str | None) -> tuple[str, str]:
    """The response id and what follows it (``""``, ``input_items``, ``cancel``) in a
    path under the route's prefix; a 404 for any other path."""
    rest = path[len(prefix) :] if prefix is not None and path.startswith(prefix + "/") else ""
    parts = rest.strip("/").split("/") if rest.strip("/") else []
    if len(parts) in (1, 2) and (len(parts) == 1 or parts[1] in _METHODS):
        return parts[0], parts[1] if len(parts) == 2 else ""
    raise NotFoundError(f"no route for {path}", code="route_not_found")


async def _send_to_provider(
    ctx: RequestContext,
    out: PhaseOutput,
    owners: ResponseOwners,
    response_id: str,
    action: str,
    query: str,
) -> None:
    runtime = ctx.runtime
    try:
        async with asyncio.timeout(runtime.config.store.timeout_ms / 1000.0):
            found = await owners.find(response_id)
    except Exception:
        runtime.services.metrics.store_error("response_owner_lookup")
        raise ServiceUnavailableError(
            "the store that records stored responses is unavailable; try again shortly",
            code="response_store_unavailable",
        ) from None
    upstream = runtime.provider_upstreams.get(found.provider) if found is not None else None
    if (
        found is None
        or found.owner not in (owner_of(ctx.identity), NOBODY)
        or (upstream is not None and upstream.provider.type is not ProviderType.OPENAI)
    ):
        shown = response_id if recordable(response_id) else "(not a response id)"
        raise _ResponseNotFoundError(f"Response with id '{shown}' not found.")
    if found.guarded and ctx.method == "GET":
        # The provider stores the answer as it generated it; the client got it through
        # the route's response guards (masked, or refused). Read back by its id (the
        # response's output; its input items, which with a previous_response_id hold the
        # earlier turns' outputs too), it would come unguarded: this route runs none.
        raise PermissionDeniedError(
            f"Response '{response_id}' was created on a route whose guardrails check "
            "answers, and the provider stores it unchecked: it is not served by its id. "
            "Use the answer as it was returned; the response can still be continued "
            "(previous_response_id) and deleted",
            code="stored_response_guarded",
        )
    if upstream is None or not upstream.credential_headers:
        raise ServiceUnavailableError(
            f"provider '{found.provider}', which stores this response, is not configured",
            code="provider_not_configured",
        )
    ctx.provider = found.provider
    ctx.stored_response = StoredResponseCall(response_id)
    endpoint = f"/responses/{response_id}" + (f"/{action}" if action else "")
    out.set_headers[":path"] = (
        upstream.provider.path_prefix + endpoint + (f"?{query}" if query else "")
    )
    out.set_headers[headers.CLUSTER] = upstream.cluster
    out.set_headers.update(upstream.credential_headers)
    # The client's credential headers were removed earlier in this phase; the provider's
    # own, set just now, must stay.
    out.remove_headers[:] = [
        name for name in out.remove_headers if name not in upstream.credential_headers
    ]
    # Uncompressed, as on every AI route: a refusal of the gateway's key is read and
    # rewritten (response_body), which a gzip body (the SDKs accept it) would defeat.
    out.remove_headers.append("accept-encoding")
    out.clear_route_cache = True


async def _forget(ctx: RequestContext, owners: ResponseOwners, response_id: str) -> None:
    runtime = ctx.runtime
    try:
        async with asyncio.timeout(runtime.config.store.timeout_ms / 1000.0):
            await owners.forget(response_id)
    except Exception:
        # The record outlives its response: continuing it gets the provider's 404.
        runtime.services.metrics.store_error("response_owner_forget")

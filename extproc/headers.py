"""Header names and metadata keys shared by the gateway and its Envoy bootstrap.

One source of truth: the renderer writes these into Envoy's routes and access log,
and the processor sets and reads them.
"""

from __future__ import annotations

PREFIX = "x-aigw-"
# Set by the gateway on the request; Envoy's routes pick the provider cluster by it.
CLUSTER = PREFIX + "cluster"
# Failover: the chain as the request resolved it, for the per-attempt filter. A key of
# the JSON body, not a header: Envoy replays one attempt's header changes into the next,
# so a header the first attempt strips (it must reach no provider) is gone for the
# second, while each attempt gets the body as the downstream filter left it.
FAILOVER_CHAIN_KEY = PREFIX + "failover-chain"
# ... and what the client's request is, beside the chain and for the same reason:
# ``{"api": <the client's API>, "headers": {<name>: <the client's value>}}``. The gateway
# writes both over any the client sent, and each attempt removes them.
FAILOVER_REQUEST_KEY = PREFIX + "failover-request"
# Who answered, for the downstream filter (removed before the client sees the answer).
ANSWERED_BY_PROVIDER = PREFIX + "provider"
ANSWERED_BY_MODEL = PREFIX + "model"
# ... and the model name that member's provider was sent (its upstream_model).
ANSWERED_UPSTREAM_MODEL = PREFIX + "upstream-model"
# Failover: the attempts whose provider started an answer that was then cut, as
# "<provider>," each (extproc.envoy_failover); removed before the client sees the answer.
ATTEMPTS_STARTED = PREFIX + "started"
# Failover: what the provider of the attempt that answered said, where the attempt
# translated it (its status, the error that replaced its 200), for the downstream filter
# to record as it would without failover (extproc.attempt_report); removed before the
# client sees the answer.
ATTEMPT_UPSTREAM = PREFIX + "attempt-upstream"
# Who the gateway authenticated, for MCP servers and A2A agents (extproc.agents). They
# get the gateway's own credential, the same for every caller, so these are all they
# have to keep one caller's tasks and sessions from another's. Written over any the
# client sent (and removed when there is nothing to say).
CALLER = PREFIX + "caller"
CALLER_API_KEY_ID = PREFIX + "api-key-id"
CALLER_USER_ID = PREFIX + "user-id"
CALLER_GROUP_ID = PREFIX + "group-id"
# What Envoy writes about the client on the request it forwards (its address, and any
# x-forwarded-for the client wrote), removed on the way to a provider: a third party has
# no use for the address of an employee's machine.
ABOUT_THE_CLIENT = ("x-forwarded-for", "x-envoy-external-address")
# Echoed to the client so a request can be traced through logs.
REQUEST_ID = "x-request-id"
# Envoy dynamic metadata namespace carrying usage to the access log and tracers.
METADATA_NAMESPACE = "io.aigw"
# The error shape of the API the client called (``RequestContext.error_shape``:
# ``openai``, ``anthropic``, ``bedrock``, ``google``, ``jsonrpc``), written in the
# gateway's first answer, before any change to the request. Envoy's own replies (a
# body over its buffer, a provider unreachable or slow) take their shape from it
# (envoy_bootstrap: local replies): the request's headers and path by then may be
# the provider's (anthropic-version and /v1/messages for an OpenAI client's Claude,
# /model/... for one served by Bedrock), not the client's.
CLIENT_API_KEY = "client_api"
# Where Envoy's json_to_metadata filter puts the request body's `model` and `stream`
# for the gateway's first message (extproc.response_path: body hints).
BODY_HINTS_NAMESPACE = "io.aigw.request"
# Client credentials that never reach a provider.
CLIENT_CREDENTIAL_HEADERS = (
    "authorization",
    "x-api-key",
    "api-key",
    # Google's: the Gemini API's SDKs and Gemini CLI send their key here.
    "x-goog-api-key",
    "proxy-authorization",
)
# Client headers that pick which account of the provider a key bills: OpenAI's organization
# and project (the openai SDK sends them from OPENAI_ORG_ID and OPENAI_PROJECT_ID), Google's
# quota project. Beside the gateway's key, a client's would bill another account, or make
# the provider refuse the gateway's key. Never passed on; the gateway sets its own.
PROVIDER_ACCOUNT_HEADERS = ("openai-organization", "openai-project", "x-goog-user-project")
# OpenAI's rate-limit headers on every answer a quota rule applies to; Envoy's virtual
# host sets them from the metadata the quota stage returns with the request body.
RATE_LIMIT_HEADERS = tuple(
    f"x-ratelimit-{part}-{unit}"
    for unit in ("requests", "tokens")
    for part in ("limit", "remaining", "reset")
)
# The same limits under Anthropic's names, on answers to Anthropic Messages API clients
# (the anthropic SDKs, Claude Code), which pace themselves by these and read no
# x-ratelimit-*. Their reset is an RFC 3339 time, as Anthropic writes it. Anthropic's
# input-tokens and output-tokens variants are left out: the gateway's token limits count
# prompt and answer together, so nothing it knows is a limit on either alone.
ANTHROPIC_RATE_LIMIT_HEADERS = tuple(
    f"anthropic-ratelimit-{unit}-{part}"
    for unit in ("requests", "tokens")
    for part in ("limit", "remaining", "reset")
)
# The provider types an Anthropic Messages request can be sent to: Anthropic, and Claude
# on Bedrock and on Vertex (response_path: every other type is refused at the body). Only
# their routes add ANTHROPIC_RATE_LIMIT_HEADERS, so routes to OpenAI's type pay nothing
# for them.
ANTHROPIC_CLIENT_PROVIDER_TYPES = frozenset({"anthropic", "bedrock", "vertex"})


def gateway_headers_added(provider_type: str) -> tuple[str, ...]:
    """The rate-limit headers a route to a provider of this type sets from the quota
    stage's metadata beside the x-ratelimit-* every route sets: Anthropic's names where
    Anthropic clients' requests can go."""
    if provider_type in ANTHROPIC_CLIENT_PROVIDER_TYPES:
        return ANTHROPIC_RATE_LIMIT_HEADERS
    return ()


# A provider's answer headers about the account the gateway's key bills, not about the
# caller: the organisation's id and its rate limits for the whole account. They told
# every caller the company's provider account and capacity, and a client that paces
# itself by them paced by a budget that is not its own. Removed by Envoy's route to
# the provider, by type (Gateway API allows 16 names to remove per route); OpenAI's
# x-ratelimit-* names are the gateway's own on its answers (RATE_LIMIT_HEADERS).
OPENAI_ACCOUNT_HEADERS = ("openai-organization", "openai-project")
ANTHROPIC_ACCOUNT_HEADERS = (
    "anthropic-organization-id",
    *(
        f"anthropic-ratelimit-{unit}-{part}"
        for unit in ("requests", "tokens", "input-tokens", "output-tokens")
        for part in ("limit", "remaining", "reset")
    ),
)


# Where a provider's (or a proxy's) redirect points. An SDK follows it past the gateway
# (the openai SDK does), sending the client's gateway key in its Authorization header to
# whatever host it names. The gateway answers a redirect with its own 502 where it reads
# the response headers (backends._redirect_plan); on the lean path they leave before it
# reads them (docs/architecture.md), so Envoy's route to a model's provider removes it
# from every answer: no model API answers with one. Agent routes keep it: the gateway
# reads it there and points it at its own route (agents.upstream_status).
REDIRECT_HEADERS = ("location",)


def provider_headers_removed(provider_type: str) -> tuple[str, ...]:
    """The answer headers Envoy removes from a provider of this type before the client
    sees its answer: where a redirect points, and what describes the account (above).
    Anthropic's answers carry no x-ratelimit-*, which keeps its list within Gateway
    API's 16."""
    if provider_type == "anthropic":
        return REDIRECT_HEADERS + ANTHROPIC_ACCOUNT_HEADERS
    if provider_type == "openai":
        return REDIRECT_HEADERS + RATE_LIMIT_HEADERS + OPENAI_ACCOUNT_HEADERS
    return REDIRECT_HEADERS + RATE_LIMIT_HEADERS


def metadata_key(header: str) -> str:
    """The dynamic metadata key that carries a response header's value to Envoy."""
    return header.replace("-", "_")

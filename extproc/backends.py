"""What each (client API, provider type) pair does to a request and its response.

The pairs the gateway serves:

- OpenAI chat -> ``openai``: model renamed, usage chunk asked for (and hidden
  from clients that did not ask); usage read.
- OpenAI chat -> ``anthropic``: ``openai_anthropic`` both ways, SSE included.
- OpenAI chat -> ``bedrock``: ``openai_bedrock`` + SigV4; Converse JSON or the
  binary event stream turned into OpenAI JSON or SSE.
- Anthropic messages -> ``anthropic``: model renamed; usage read.
- Anthropic messages -> ``bedrock`` (Claude models only): ``anthropic_bedrock`` +
  SigV4: InvokeModel with Anthropic's body, the JSON answer passed through, the
  event stream turned into Anthropic's SSE, Bedrock's errors into Anthropic's.
- OpenAI embeddings -> ``openai``: model renamed; usage (prompt tokens) read.
- OpenAI embeddings -> ``bedrock``: InvokeModel + SigV4, with Cohere Embed's body
  (``bedrock_cohere_embeddings``) for a model id naming it, else Titan's
  (``bedrock_embeddings``).
- OpenAI Responses API -> ``openai``: ``openai_responses``: model renamed; usage read
  from the JSON answer or the stream's terminal event. No other provider type has
  the API, and none is translated to.
- OpenAI Responses compaction -> ``openai``: model renamed, sent to the provider's
  ``/responses/compact``; usage read from its JSON answer (a response's usage). Refused
  with a 400 for the other provider types, which have no such API.
- OpenAI Responses token count -> ``openai``: model renamed, sent to the provider's
  ``/responses/input_tokens``; its ``{"input_tokens": N}`` passes through unread, as
  Anthropic's count does. Refused with a 400 for the other provider types.
- OpenAI text completions -> ``openai``: ``openai_completions``, which is chat's
  pass-through (model renamed, usage chunk asked for and hidden from clients that did
  not ask; usage read). Anthropic and Bedrock have no such API: refused with a 400.
- Anthropic count_tokens -> ``anthropic``: model renamed, sent to the provider's
  ``/messages/count_tokens``; its ``{"input_tokens": N}`` passes through unread (a
  count generates nothing: no usage, no cost).
- Anthropic count_tokens -> ``bedrock`` (Claude models only):
  ``anthropic_bedrock_count`` + SigV4: CountTokens with the InvokeModel body the
  Messages call would send; ``{"inputTokens": N}`` becomes ``{"input_tokens": N}``,
  read as no usage.
- Bedrock Converse -> ``bedrock``: the client's body as it came (the model is in the
  path: the provider's id for it), signed with the gateway's AWS credentials; the
  answer, JSON or event stream, passes through unchanged, its usage read
  (``bedrock_bedrock``). No other provider type speaks Converse: refused with a 400.
- Bedrock InvokeModel (Claude's body) -> ``bedrock``, Claude models only: as Converse,
  the client's body as it came, signed by the gateway, the answer passed through; its
  usage read as Claude's on Anthropic's API (``bedrock_invoke``). Other models' bodies
  (each family has its own) are refused with a 400 that names Converse.
- Anthropic messages and count_tokens -> ``vertex`` (Claude models only): the body as
  Vertex takes it (``anthropic_vertex``: the model in the path, its own
  ``anthropic_version``), an OAuth2 access token; the answer is Anthropic's own, read as
  from Anthropic.
- OpenAI chat -> ``vertex``: Claude models as to ``anthropic`` (``openai_anthropic``)
  with Vertex's body and path; every other model (Gemini...) as to ``openai``, at Vertex's
  OpenAI-compatible endpoint. Vertex's own errors (Google's shape) are written in the
  client's (``vertex_errors``).
- OpenAI embeddings -> ``vertex`` (Google's text embedding models only): ``:predict`` with
  one instance per text (``vertex_embeddings``), the answer turned into OpenAI's list.
  Vertex serves no other client API here: refused with a 400.

Provider errors reach the client in its API's shape. A provider's 401, 402 or 403
refused the gateway's own key or account, whichever the pair: the client gets the
gateway's ``upstream_credentials_refused`` error, never the provider's body as it was
(OpenAI's 401 names a fragment of the key it was sent); translated pairs make it a 502,
pass-through pairs keep the provider's status (they may take the lean path).

Stages ask this module for a plan and stay free of per-provider branches.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import orjson

from extproc import (
    audio_api,
    aws_eventstream,
    bedrock_count_tokens,
    gemini_api,
    images_api,
    moderations_api,
    openai_inputs,
    rerank_api,
    speech_api,
)
from extproc.answer_encoding import BROKEN_STATUS, DecompressedAnswer, decoded, readable_encoding
from extproc.answer_status import MAX_HTTP_STATUS, is_redirect
from extproc.bedrock_invoke_bodies import (
    EMBEDDINGS_PREFIXES,
    body_family,
    invokes_embeddings,
    reads_as_claude,
    takes_body,
)
from extproc.completions_api import returned_choices
from extproc.config.model import (
    GEMINI_APIS,
    UNMETERED_APIS,
    ProviderType,
    RouteApi,
)
from extproc.context import RequestContext, Usage
from extproc.credential_forms import MIN_SEARCHED_SECRET, quoted_forms, starred, unfinished_at
from extproc.envoy_failover import FAILOVER_APIS
from extproc.envoy_replies import VIA_UPSTREAM, envoy_reply_error
from extproc.errors import (
    BEDROCK_ERROR_TYPE_HEADER,
    BadRequestError,
    ServiceUnavailableError,
    UpstreamError,
    anthropic_error_body,
    bedrock_error_body,
    bedrock_exception,
    credentials_refused,
    error_body,
    google_error_body,
    response_too_large,
    without_secrets,
)
from extproc.guardrails.request_metadata import Carried
from extproc.providers import credentials_pending, vertex_endpoints
from extproc.providers.aws_signer import HASHED_OFF_LOOP_BYTES, AwsSigner, payload_sha256
from extproc.providers.bedrock_model_ids import base_model_id
from extproc.responses_api import RESPONSES_REQUESTS
from extproc.runtime import Upstream
from extproc.translators import (
    anthropic_anthropic,
    anthropic_bedrock,
    anthropic_bedrock_count,
    anthropic_vertex,
    bedrock_bedrock,
    bedrock_cohere_embeddings,
    bedrock_embeddings,
    bedrock_invoke,
    foreign_errors,
    gemini_gemini,
    openai_anthropic,
    openai_audio,
    openai_bedrock,
    openai_bedrock_stream,
    openai_completions,
    openai_embeddings,
    openai_images,
    openai_openai,
    openai_rerank,
    openai_responses,
    vertex_embeddings,
    vertex_errors,
)
from extproc.translators.answer_errors import ProviderAnswerError
from extproc.translators.base import (
    MAX_PROVIDER_MESSAGE,
    ResponseTranslator,
    WrappedReader,
    refuse_forced_call_without_tools,
    renamed,
)
from extproc.translators.cache_breakpoints import check_cache_controls
from extproc.translators.generated_text import generated_chars, responses_delta_chars
from extproc.translators.openai_chat_extras import VERTEX_WEB_SEARCH_BETA, searches_the_web
from extproc.translators.openai_image_usage import tool_model, tool_picture_allowance
from extproc.translators.openai_speech import SpeechAudioReader, SpeechEventReader
from extproc.translators.response_formats import schema_to_hold

SSE = "text/event-stream"
AWS_EVENT_STREAM = aws_eventstream.CONTENT_TYPE
# Envoy's router adds this to every answer that came from an upstream.
ENVOY_UPSTREAM_TIME = "x-envoy-upstream-service-time"
# The client APIs that speak Anthropic's wire format (and its error shape).
ANTHROPIC_APIS = frozenset({RouteApi.ANTHROPIC_MESSAGES, RouteApi.ANTHROPIC_COUNT_TOKENS})
# The client APIs of Bedrock Runtime's own operations (Converse, InvokeModel): passed
# through to Bedrock, their errors in its shape.
BEDROCK_RUNTIME_APIS = frozenset(
    {RouteApi.BEDROCK_CONVERSE, RouteApi.BEDROCK_INVOKE, RouteApi.BEDROCK_COUNT_TOKENS}
)
# Where Anthropic counts a Messages body's tokens, under its Messages path.
COUNT_TOKENS_SUFFIX = "/count_tokens"
# Where an OpenAI-compatible provider serves each endpoint that takes a Responses body.
_RESPONSES_ENDPOINTS = {
    RouteApi.OPENAI_RESPONSES: openai_responses.ENDPOINT,
    RouteApi.OPENAI_RESPONSES_COMPACT: openai_responses.COMPACT_ENDPOINT,
    RouteApi.OPENAI_RESPONSES_INPUT_TOKENS: openai_responses.INPUT_TOKENS_ENDPOINT,
}
# The endpoints of OpenAI-compatible providers alone, as a refusal of another provider
# type's model names them, and what it tells the client to do instead.
_ONLY_OPENAI = {
    RouteApi.OPENAI_COMPLETIONS: (
        "text completions API (/v1/completions)",
        "send it to /v1/chat/completions",
    ),
    RouteApi.OPENAI_RESPONSES_COMPACT: (
        "Responses API compaction (/v1/responses/compact)",
        "only models of OpenAI-compatible providers are compacted there",
    ),
    RouteApi.OPENAI_RESPONSES_INPUT_TOKENS: (
        "Responses API token count (/v1/responses/input_tokens)",
        "only models of OpenAI-compatible providers are counted there (Anthropic's at "
        "/v1/messages/count_tokens)",
    ),
    RouteApi.OPENAI_IMAGES: (
        "Images API (/v1/images/generations, /v1/images/edits)",
        "only image models of OpenAI-compatible providers draw and edit there",
    ),
    RouteApi.OPENAI_AUDIO: (
        "audio API (/v1/audio/transcriptions, /v1/audio/translations, /v1/audio/speech)",
        "only transcription and speech models of OpenAI-compatible providers are served there",
    ),
    RouteApi.OPENAI_MODERATIONS: (
        "Moderations API (/v1/moderations)",
        "only moderation models of OpenAI-compatible providers classify there",
    ),
    RouteApi.RERANK: (
        "rerank API (/v1/rerank, /v2/rerank)",
        "only rerank models of OpenAI-compatible providers (Cohere, Jina, Voyage, vLLM) are "
        "served there",
    ),
}


@dataclass(slots=True)
class RequestPlan:
    body: bytes | None
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    # Client headers the provider must not get (a beta flag list it would refuse).
    remove_headers: list[str] = field(default_factory=list)
    # A request to AWS whose body is too large to hash on the event loop: its signature
    # headers are not in ``headers`` yet; the caller awaits ``sign_pending`` for them.
    signature: PendingSignature | None = None


@dataclass(frozen=True, slots=True)
class PendingSignature:
    """What ``sign_pending`` signs once the body's hash is computed in a thread."""

    signer: AwsSigner
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass(slots=True)
class ResponsePlan:
    translator: ResponseTranslator | None
    streamed: bool = False
    set_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: list[str] = field(default_factory=list)


def _json(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value)


def plan_request(
    ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream, raw: bytes = b""
) -> RequestPlan:
    """Translate and authenticate the request for ``upstream``; refuse pairs not served.

    ``raw`` is the body as the client sent it: a pass-through signed by the gateway
    (Converse) signs those very bytes when nothing changed them."""
    route = ctx.route
    assert route is not None
    kind = upstream.provider.type
    query = ctx.path.partition("?")[2]
    suffix = "?" + query if query else ""
    if kind is ProviderType.VERTEX:
        return _vertex_request(ctx, parsed, upstream, raw)
    if route.api is RouteApi.ANTHROPIC_MESSAGES and kind is ProviderType.BEDROCK:
        ctx.client_wants_usage = True  # Claude's streams carry usage on Bedrock too
        return _claude_on_bedrock_request(ctx, parsed, upstream)
    if route.api is RouteApi.ANTHROPIC_COUNT_TOKENS and kind is ProviderType.BEDROCK:
        return _claude_count_on_bedrock_request(ctx, parsed, upstream)
    if route.api in ANTHROPIC_APIS and kind is ProviderType.ANTHROPIC:
        ctx.client_wants_usage = True  # Anthropic streams always carry usage
        rewritten = anthropic_anthropic.prepare_request(parsed, upstream.upstream_model)
        if rewritten is None and ctx.body_changed:
            rewritten = parsed
        path = upstream.path
        if route.api is RouteApi.ANTHROPIC_COUNT_TOKENS:
            path += COUNT_TOKENS_SUFFIX
        return RequestPlan(
            _json(rewritten) if rewritten is not None else None,
            path + suffix,
            _anthropic_headers(ctx, upstream),
        )
    if route.api is RouteApi.OPENAI_EMBEDDINGS:
        return _embeddings_request(ctx, parsed, upstream, suffix)
    if route.api is RouteApi.RERANK:
        if kind is not ProviderType.OPENAI:
            raise _no_such_api(ctx, kind, *_ONLY_OPENAI[route.api])
        endpoint = rerank_api.upstream_path(upstream.provider.path_prefix, ctx.path)
        return _pass_through(ctx, parsed, upstream, endpoint, suffix, prefixed=False)
    if route.api in BEDROCK_RUNTIME_APIS:
        return _bedrock_runtime_request(ctx, parsed, upstream, raw)
    if route.api in RESPONSES_REQUESTS:
        return _responses_request(ctx, parsed, upstream, suffix)
    if route.api is RouteApi.OPENAI_COMPLETIONS:
        return _completions_request(ctx, parsed, upstream, suffix)
    if route.api is RouteApi.OPENAI_IMAGES:
        # As it came, under the provider's name for the model: its streams always carry
        # their usage (image_generation.completed), nothing to ask.
        check_pair(ctx, parsed, upstream)
        if ctx.form is not None:
            return _edit_request(ctx, parsed, upstream, suffix)
        return _pass_through(ctx, parsed, upstream, images_api.GENERATIONS_ENDPOINT + suffix)
    if route.api is RouteApi.OPENAI_MODERATIONS:
        # As it came, under the provider's name for the model (written in when the body
        # named none: the gateway's default, extproc.moderations_api).
        check_pair(ctx, parsed, upstream)
        return _pass_through(ctx, parsed, upstream, moderations_api.ENDPOINT + suffix)
    if route.api is RouteApi.OPENAI_AUDIO:
        check_pair(ctx, parsed, upstream)
        if ctx.form is None:
            return _speech_request(ctx, parsed, upstream, suffix)
        return _audio_request(ctx, parsed, upstream, suffix)
    if route.api is not RouteApi.OPENAI_CHAT:
        raise _unsupported(ctx, kind)
    ctx.client_wants_usage = client_asked_for_usage(ctx, parsed)
    if kind is ProviderType.OPENAI:
        return _openai_request(ctx, parsed, upstream, upstream.path + suffix)
    if kind is ProviderType.ANTHROPIC:
        translated = openai_anthropic.translate_request(
            parsed,
            upstream.upstream_model,
            stream=ctx.stream,
            anthropic_version=_anthropic_version(ctx, upstream),
        )
        return RequestPlan(_json(translated), upstream.path, _anthropic_headers(ctx, upstream))
    if kind is ProviderType.BEDROCK:
        signer = _signer(upstream)
        body = _json(openai_bedrock.translate_request(parsed, model_id=upstream.upstream_model))
        path = upstream.provider.path_prefix + openai_bedrock.request_path(
            upstream.upstream_model, stream=ctx.stream
        )
        headers = {"content-type": "application/json"}
        return _signed_plan(signer, path, body, headers)
    raise _unsupported(ctx, kind)


def check_pair(ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream) -> None:
    """Refuse a request its provider cannot serve as soon as the model is known: a client
    API the provider's type does not speak (and nothing translates to), embeddings a
    Bedrock model cannot take (a model that is not Titan's or Cohere's embeddings; a
    batch for Titan; token ids, more than 96 texts or an unknown ``input_type`` for
    Cohere), a chat completion asking Bedrock for what
    Converse cannot do at the body's top level (``n``, ``functions``, a ``json_object``
    ``response_format``, ``service_tier``), a ``json_object`` or malformed
    ``response_format`` for a translated Claude, one to be translated that forces a
    tool call without declaring tools, or a token count for Claude on Bedrock whose
    thinking budget no ``max_tokens`` can be set above.

    Refused here rather than when the body is translated, which comes after the quota
    reservation: a request limit would count a 400 that never reached a provider (and a
    guardrail webhook would have been called for it)."""
    route = ctx.route
    assert route is not None
    kind = upstream.provider.type
    if route.api in ANTHROPIC_APIS:
        if kind is ProviderType.BEDROCK:
            _check_claude_on_bedrock(ctx, upstream)
            if route.api is RouteApi.ANTHROPIC_COUNT_TOKENS:
                anthropic_bedrock_count.check_request(parsed)
        if kind is ProviderType.VERTEX:
            _check_claude_on_vertex(ctx, upstream)
        served = kind in (ProviderType.ANTHROPIC, ProviderType.BEDROCK, ProviderType.VERTEX)
    elif route.api in GEMINI_APIS:
        if kind is ProviderType.VERTEX:
            _check_gemini_on_vertex(ctx, upstream)
        served = kind is ProviderType.VERTEX
    elif route.api in BEDROCK_RUNTIME_APIS:
        # Bedrock's own operations, for any of its models: a body Bedrock's model cannot
        # take is Bedrock's to refuse.
        served = kind is ProviderType.BEDROCK
    elif route.api is RouteApi.OPENAI_EMBEDDINGS:
        if kind is ProviderType.BEDROCK:
            _check_bedrock_embeddings(ctx, parsed, upstream.upstream_model)
        if kind is ProviderType.VERTEX:
            _check_vertex_embeddings(ctx, parsed, upstream)
        served = kind in (ProviderType.OPENAI, ProviderType.BEDROCK, ProviderType.VERTEX)
    elif route.api is RouteApi.OPENAI_RESPONSES:
        served = kind is ProviderType.OPENAI
    elif route.api in _ONLY_OPENAI:
        if kind is not ProviderType.OPENAI:
            raise _no_such_api(ctx, kind, *_ONLY_OPENAI[route.api])
        served = True
    else:
        if kind is not ProviderType.OPENAI:
            # OpenAI's own refusal, which a translation dropping the choice would lose.
            refuse_forced_call_without_tools(parsed)
        if kind is ProviderType.ANTHROPIC or (
            kind is ProviderType.VERTEX and vertex_endpoints.is_claude(upstream.upstream_model)
        ):
            # A json_object or malformed response_format: the translation's 400
            # (Bedrock's is in check_request).
            schema_to_hold(parsed.get("response_format"), openai_anthropic.CLAUDE)
            check_cache_controls(parsed)
        if kind is ProviderType.ANTHROPIC:
            # reasoning_effort beside what Claude refuses while it thinks (a temperature, a
            # forced tool call, a bound with no room to think), audio output, web search
            # Claude could not do, malformed documents: the translation's 400s.
            version = _anthropic_version(ctx, upstream)
            openai_anthropic.check_before_quota(
                parsed, upstream.upstream_model, anthropic_version=version
            )
        if kind is ProviderType.VERTEX and vertex_endpoints.is_claude(upstream.upstream_model):
            openai_anthropic.check_before_quota(parsed, upstream.upstream_model, image_urls=False)
        if kind is ProviderType.BEDROCK:
            check_cache_controls(parsed)
            guards = ctx.runtime.guardrails.for_route(route.name)
            enrichment = guards.enrichment if guards is not None else None
            openai_bedrock.check_request(
                parsed,
                model_id=upstream.upstream_model,
                # The route's user message opens the conversation by translation time.
                route_prepends_user=enrichment is not None
                and any(message.role == "user" for message in enrichment.prepend),
            )
        served = True  # chat completions reach every provider type, translated
    if not served:
        raise _unsupported(ctx, kind)


def _anthropic_version(ctx: RequestContext, upstream: Upstream) -> str:
    """The anthropic-version an OpenAI chat request goes to Anthropic with: the client's
    header, else the provider's."""
    return ctx.request_headers.get("anthropic-version", upstream.provider.anthropic_version)


def check_translation(ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream) -> None:
    """Refuse, as ``plan_request`` would, a request ``upstream`` cannot be sent: the early
    checks (``check_pair``), then, for the pairs whose translation refuses more than
    those (OpenAI chat to Anthropic, to Bedrock, to Claude on Vertex: ``n``, log
    probabilities, a content part or a ``stop`` the provider has no room for...), the
    translation itself, thrown away. Nothing is signed and no credential read, and
    ``parsed`` is left as it was (the translators build a body of their own).

    A failover chain asks it of every member before the attempts are planned
    (``stages.attempt.failover_plan``): an attempt's translation runs in Envoy's
    upstream filter, after the chain's earlier members failed, where its refusal
    could only reach the client as a 400 for a request the model it named accepts."""
    check_pair(ctx, parsed, upstream)
    route = ctx.route
    assert route is not None
    if route.api is not RouteApi.OPENAI_CHAT:
        return  # the other pairs pass the body on, or translate without refusing
    kind = upstream.provider.type
    model = upstream.upstream_model
    if kind is ProviderType.ANTHROPIC:
        openai_anthropic.translate_request(
            parsed, model, stream=ctx.stream, anthropic_version=_anthropic_version(ctx, upstream)
        )
    elif kind is ProviderType.BEDROCK:
        openai_bedrock.translate_request(parsed, model_id=model)
    elif kind is ProviderType.VERTEX and vertex_endpoints.is_claude(model):
        openai_anthropic.translate_request(
            parsed, model, stream=ctx.stream, image_urls=False, inference_geo=False
        )


def serves_client_api(api: RouteApi, upstream: Upstream) -> bool:
    """Whether ``upstream`` can answer a request of a failover client API at all, whatever
    its body (``check_pair`` refuses the rest with a 400 when the model is the one the
    request named; a failover chain leaves such a fallback out instead). Chat completions
    reach every provider type, translated; Anthropic's Messages API reaches Claude alone,
    on Anthropic, Bedrock and Vertex: nothing translates it to OpenAI's API. Gemini's API
    reaches Google's own models on Vertex; Bedrock Runtime's operations reach Bedrock
    (Converse speaks every Bedrock model; an InvokeModel body is one family's:
    ``serves_invoke_body``). The Responses API (its compaction included) and text
    completions reach OpenAI-compatible providers alone; embeddings reach those, Bedrock
    and Google's text embedding models on Vertex, though only the same model's vectors
    compare (``same_embeddings_model``)."""
    kind = upstream.provider.type
    if api is RouteApi.OPENAI_CHAT:
        return True
    if api in (RouteApi.OPENAI_RESPONSES, RouteApi.OPENAI_RESPONSES_COMPACT):
        return kind is ProviderType.OPENAI
    if api in (
        RouteApi.OPENAI_COMPLETIONS,
        RouteApi.OPENAI_IMAGES,
        RouteApi.OPENAI_AUDIO,
        RouteApi.OPENAI_MODERATIONS,
    ):
        return kind is ProviderType.OPENAI
    if api is RouteApi.OPENAI_EMBEDDINGS:
        if kind is ProviderType.VERTEX:
            return vertex_endpoints.is_text_embedding_model(upstream.upstream_model)
        return kind in (ProviderType.OPENAI, ProviderType.BEDROCK)
    if api is RouteApi.GEMINI_GENERATE_CONTENT:
        return kind is ProviderType.VERTEX and vertex_endpoints.is_google_model(
            upstream.upstream_model
        )
    if api in (RouteApi.BEDROCK_CONVERSE, RouteApi.BEDROCK_INVOKE):
        return kind is ProviderType.BEDROCK
    if api is not RouteApi.ANTHROPIC_MESSAGES:
        return False
    if kind is ProviderType.BEDROCK:
        return anthropic_bedrock.may_run_claude(upstream.upstream_model)
    if kind is ProviderType.VERTEX:
        return vertex_endpoints.is_claude(upstream.upstream_model)
    return kind is ProviderType.ANTHROPIC


def openai_metadata_carried(api: RouteApi, upstream: Upstream) -> Carried:
    """What of an OpenAI request's ``metadata`` and end-user identifiers (``user``,
    ``safety_identifier``, ``prompt_cache_key``) the request's body carries to ``upstream``,
    which request guards read (``guardrails.request_metadata``): everything where the body
    goes as OpenAI's; for chat, the end user's identifier alone to Claude (Anthropic's
    ``metadata.user_id``, ``openai_anthropic``) and nothing to Bedrock's Converse
    (``openai_bedrock``); for embeddings, nothing to Bedrock (Titan's and Cohere's bodies)
    or Vertex AI (``:predict``), which take the texts alone."""
    kind = upstream.provider.type
    if kind is ProviderType.OPENAI:
        return Carried.ALL
    if api is RouteApi.OPENAI_EMBEDDINGS:
        if kind in (ProviderType.BEDROCK, ProviderType.VERTEX):
            return Carried.NOTHING
        return Carried.ALL
    if api is not RouteApi.OPENAI_CHAT:
        return Carried.ALL
    if kind is ProviderType.BEDROCK:
        return Carried.NOTHING
    if kind is ProviderType.ANTHROPIC or (
        kind is ProviderType.VERTEX and vertex_endpoints.is_claude(upstream.upstream_model)
    ):
        return Carried.END_USER
    return Carried.ALL  # Vertex AI's OpenAI-compatible endpoint


def same_embeddings_model(primary: Upstream, fallback: Upstream) -> bool:
    """Whether ``fallback`` embeds with the very model ``primary`` does (another region,
    account or deployment of it): vectors of different models live in different spaces,
    so one from another model would be compared with the client's stored vectors and
    mean nothing, without any error to tell. Told by the provider's name for the model,
    on a provider of the same type (a Bedrock id less its inference profile's region, a
    Vertex name less Google's ``google/`` publisher);
    a deployment under a name of its own is not recognised, so not tried."""
    kind = primary.provider.type
    if fallback.provider.type is not kind:
        return False
    if kind is ProviderType.BEDROCK:
        return base_model_id(primary.upstream_model) == base_model_id(fallback.upstream_model)
    if kind is ProviderType.VERTEX:
        # ``google/text-embedding-005`` is ``text-embedding-005``: one model, one path.
        named = vertex_endpoints.google_model_name
        return named(primary.upstream_model) == named(fallback.upstream_model)
    return primary.upstream_model == fallback.upstream_model


def serves_invoke_body(body: dict[str, Any], named_model: str, fallback_model: str) -> bool:
    """Whether the Bedrock model ``fallback_model`` takes an InvokeModel ``body`` written
    for ``named_model``: each family has a body of its own, and another family's is
    refused (Claude's body to Llama), or worse, read some other way. Claude's body goes to
    any Claude (an ARN that hides its model is Bedrock's to check, as for Anthropic's
    clients); another body to a model of the family ``bedrock_invoke_bodies`` knows it
    by (Llama, Titan Text, each Nova text model, Cohere's Command R and its older
    Command, gpt-oss, AI21 Jamba, Writer Palmyra, Titan's and Cohere's embeddings;
    Mistral's listed models, each taking the body's ``prompt`` or ``messages`` only if
    its page lists that kind: ``takes_body``), else to the same model alone, in another
    region or account. A body for a model an ARN hides is of no family the gateway can
    tell: it goes to that model alone."""
    if reads_as_claude(named_model, body):
        return anthropic_bedrock.may_run_claude(fallback_model)
    family = body_family(named_model)
    return (
        family is not None
        and family == body_family(fallback_model)
        and takes_body(fallback_model, body)
    )


def _check_bedrock_embeddings(ctx: RequestContext, parsed: dict[str, Any], model_id: str) -> None:
    """Embeddings reach Titan's and Cohere's embedding models alone, with what their
    bodies can take. Another model would get Titan's body, and Titan Text reads that
    body as a prompt: it generates (and Bedrock bills) a completion nobody asked for,
    which the client gets as a 502. An ARN that hides its model is Bedrock's to judge."""
    named = base_model_id(model_id)
    if not named.startswith(("arn:", *EMBEDDINGS_PREFIXES)):
        raise BadRequestError(
            f"model '{ctx.model}' is a Bedrock model without embeddings (only Amazon "
            "Titan's and Cohere's embedding models, such as amazon.titan-embed-text-v2:0 "
            "or cohere.embed-english-v3, are served on /v1/embeddings); send it to "
            "/v1/chat/completions",
            param="model",
            code="unsupported_model_for_route",
        )
    if bedrock_cohere_embeddings.is_cohere_model(model_id):
        bedrock_cohere_embeddings.check_request(parsed, model_id)
    else:
        bedrock_embeddings.input_text(parsed)


def _check_vertex_embeddings(
    ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream
) -> None:
    """Embeddings reach Google's text embedding models on Vertex alone (a chat model's
    ``:predict`` is no embedding), with what ``:predict`` can take."""
    model = upstream.upstream_model
    if not vertex_endpoints.is_text_embedding_model(model):
        served = (
            "only Google's text embedding models, such as gemini-embedding-001 or "
            "text-embedding-005, are served on /v1/embeddings"
        )
        # Vertex's multimodal embeddings take another body: no chat model to send it to.
        message = (
            f"model '{ctx.model}' is a Vertex AI multimodal embedding model, which the "
            f"gateway does not serve ({served})"
            if vertex_endpoints.is_embedding_model(model)
            else f"model '{ctx.model}' is a Vertex AI model without embeddings ({served}); "
            "send it to /v1/chat/completions"
        )
        raise BadRequestError(message, param="model", code="unsupported_model_for_route")
    vertex_embeddings.check_request(parsed, model)


def _responses_request(
    ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream, suffix: str
) -> RequestPlan:
    """Responses API calls, compactions and token counts go to OpenAI-compatible
    providers as they are. Its streams always report usage: nothing to ask."""
    check_pair(ctx, parsed, upstream)
    route = ctx.route
    assert route is not None
    return _pass_through(ctx, parsed, upstream, _RESPONSES_ENDPOINTS[route.api] + suffix)


def client_asked_for_usage(ctx: RequestContext, parsed: dict[str, Any]) -> bool:
    """Whether a streamed OpenAI request asked for its usage chunk itself; when it did
    not, the gateway asks for it and hides it from the client."""
    options = parsed.get("stream_options")
    return ctx.stream and isinstance(options, dict) and options.get("include_usage") is True


def _completions_request(
    ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream, suffix: str
) -> RequestPlan:
    """Text completions go to OpenAI-compatible providers as chat completions do: under
    the provider's name for the model, a stream asking for its usage."""
    check_pair(ctx, parsed, upstream)
    ctx.client_wants_usage = client_asked_for_usage(ctx, parsed)
    path = upstream.provider.path_prefix + openai_completions.ENDPOINT + suffix
    return _openai_request(ctx, parsed, upstream, path)


def _openai_request(
    ctx: RequestContext,
    parsed: dict[str, Any],
    upstream: Upstream,
    path: str,
    model: str | None = None,
) -> RequestPlan:
    """A chat or text completion to an OpenAI-compatible provider: under the provider's
    name for the model (``model``, else ``upstream_model``), a stream asking for its
    usage (``openai_openai.prepare_request``); the client's bytes as they came when
    nothing changed."""
    rewritten = openai_openai.prepare_request(
        parsed,
        model or upstream.upstream_model,
        stream=ctx.stream,
        client_wants_usage=ctx.client_wants_usage,
    )
    if rewritten is None and ctx.body_changed:
        rewritten = parsed
    body = _json(rewritten) if rewritten is not None else None
    return RequestPlan(body, path, _credentials(upstream))


def _pass_through(
    ctx: RequestContext,
    parsed: dict[str, Any],
    upstream: Upstream,
    endpoint: str,
    suffix: str = "",
    *,
    prefixed: bool = True,
) -> RequestPlan:
    """The client's body, under the provider's name for the model, to ``endpoint`` under
    the provider's API path (``prefixed``; else ``endpoint`` is the whole path), with the
    provider's credential."""
    rewritten = renamed(parsed, upstream.upstream_model)
    if rewritten is None and ctx.body_changed:
        rewritten = parsed
    path = upstream.provider.path_prefix + endpoint if prefixed else endpoint
    return RequestPlan(
        _json(rewritten) if rewritten is not None else None,
        path + suffix,
        _credentials(upstream),
    )


def _edit_request(
    ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream, suffix: str
) -> RequestPlan:
    """An image edit's form, as the client sent it, to the provider's edits endpoint with
    the provider's credential: only the text fields the gateway changed (the provider's
    name for the model, a prompt a guard masked) are spliced in; the files are never
    re-encoded."""
    assert ctx.form is not None
    changed = {"model": upstream.upstream_model}
    prompt = parsed.get("prompt")
    if isinstance(prompt, str):
        changed["prompt"] = prompt
    return RequestPlan(
        ctx.form.with_fields(changed),
        upstream.provider.path_prefix + images_api.EDITS_ENDPOINT + suffix,
        _credentials(upstream),
    )


def _audio_request(
    ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream, suffix: str
) -> RequestPlan:
    """A speech-to-text form, as the client sent it, to the provider's endpoint with the
    provider's credential: only the fields the gateway changes are spliced in (the
    provider's name for the model, a prompt a guard masked, and the response format that
    carries the bill, ``audio_api.provider_format``); the audio is never re-encoded."""
    assert ctx.form is not None
    changed = {"model": upstream.upstream_model}
    prompt = parsed.get("prompt")
    if isinstance(prompt, str):
        changed["prompt"] = prompt
    asked = audio_api.provider_format(ctx.path, parsed)
    if asked != audio_api.client_format(parsed):
        changed["response_format"] = asked
    return RequestPlan(
        ctx.form.with_fields(changed),
        upstream.provider.path_prefix + audio_api.upstream_path(ctx.path) + suffix,
        _credentials(upstream),
    )


def _speech_request(
    ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream, suffix: str
) -> RequestPlan:
    """Text-to-speech: JSON, as it came, under the provider's name for the model; a model
    billed by tokens asked for the event stream that alone carries them
    (``speech_api.provider_body``)."""
    endpoint = audio_api.upstream_path(ctx.path) + suffix
    changed = speech_api.provider_body(parsed, ctx.model or "", upstream.upstream_model)
    if changed is None:
        return _pass_through(ctx, parsed, upstream, endpoint)
    return RequestPlan(
        _json(changed), upstream.provider.path_prefix + endpoint, _credentials(upstream)
    )


def _speech_answer_plan(ctx: RequestContext, streaming: bool) -> ResponsePlan:
    """A text-to-speech answer, passed on as it comes (``translators.openai_speech``):
    raw audio billed per character of the input; an event stream read for its usage, its
    audio decoded for a client that asked for the raw audio."""
    body = ctx.body or {}
    upstream_model = ctx.upstream_model or ""
    allowance = speech_api.audio_allowance(body, ctx.model or "", upstream_model)
    if not speech_api.reports_tokens(ctx.model or "", upstream_model):
        return ResponsePlan(SpeechAudioReader(speech_api.characters(body)), streamed=True)
    if not streaming:
        # Raw audio from a model billed by tokens (a provider that ignored the
        # stream_format asked): no usage in it, charged the estimate.
        return ResponsePlan(SpeechAudioReader(None, allowance), streamed=True)
    if speech_api.client_wants_events(body):
        return ResponsePlan(SpeechEventReader(allowance, decode=False), streamed=True)
    return ResponsePlan(
        SpeechEventReader(allowance, decode=True),
        streamed=True,
        set_headers={"content-type": speech_api.content_type(body)},
        remove_headers=["content-length"],
    )


def _audio_answer_plan(ctx: RequestContext, streaming: bool, content_type: str) -> ResponsePlan:
    """A speech-to-text answer: a stream's done event read; a JSON answer's usage read and,
    where the client asked for another format than the provider was, that one rendered
    from it (``translators.openai_audio``). An answer in another format than JSON (a
    provider that ignored the format asked) passes as it came, charged the estimate."""
    if ctx.form is None:
        return _speech_answer_plan(ctx, streaming)
    body = ctx.body or {}
    if streaming:
        return ResponsePlan(openai_audio.TranscriptEventReader(), streamed=True)
    asked = audio_api.client_format(body)
    if "json" not in content_type or asked == audio_api.provider_format(ctx.path, body):
        return ResponsePlan(openai_audio.TranscriptionReader())
    shown = "application/json" if asked == audio_api.JSON else openai_audio.TEXT_CONTENT_TYPE
    return ResponsePlan(
        openai_audio.TranscriptionReader(asked),
        set_headers={"content-type": shown},
        remove_headers=["content-length"],
    )


def _embeddings_request(
    ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream, suffix: str
) -> RequestPlan:
    """Embeddings go to OpenAI-compatible providers as they are, under the provider's
    name for the model, and to Bedrock as an InvokeModel call in Cohere Embed's body or
    Titan's, by the model id; Anthropic has no embeddings API."""
    kind = upstream.provider.type
    if kind is ProviderType.BEDROCK:
        signer = _signer(upstream)
        model_id = upstream.upstream_model
        if bedrock_cohere_embeddings.is_cohere_model(model_id):
            translated = bedrock_cohere_embeddings.translate_request(parsed, model_id)
        else:
            translated = bedrock_embeddings.translate_request(parsed)
        body = _json(translated)
        path = upstream.provider.path_prefix + bedrock_embeddings.request_path(model_id)
        headers = {"content-type": "application/json", "accept": "application/json"}
        return _signed_plan(signer, path, body, headers)
    if kind is not ProviderType.OPENAI:
        raise _unsupported(ctx, kind)
    return _pass_through(ctx, parsed, upstream, openai_embeddings.ENDPOINT + suffix)


def _bedrock_runtime_request(
    ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream, raw: bytes
) -> RequestPlan:
    """A Converse or InvokeModel call goes to Bedrock as the client sent it, under the
    provider's id for the model (in the path) and the gateway's signature; re-serialised
    only when the gateway changed the body (a guard's mask, enrichment, a hard cap)."""
    kind = upstream.provider.type
    if kind is not ProviderType.BEDROCK:
        raise _unsupported(ctx, kind)
    signer = _signer(upstream)
    route = ctx.route
    assert route is not None
    changed = ctx.body_changed or not raw
    if route.api is RouteApi.BEDROCK_COUNT_TOKENS:
        # The counted InvokeModel body was decoded for the guards: its bytes again.
        body = _json(bedrock_count_tokens.encoded(parsed)) if changed else raw
        model_path = anthropic_bedrock_count.request_path(upstream.upstream_model)
    else:
        body = _json(parsed) if changed else raw
        operation_path = (
            anthropic_bedrock.request_path
            if route.api is RouteApi.BEDROCK_INVOKE
            else openai_bedrock.request_path
        )
        model_path = operation_path(upstream.upstream_model, stream=ctx.stream)
    path = upstream.provider.path_prefix + model_path
    headers = {"content-type": "application/json"}
    return _signed_plan(signer, path, body, headers, send_body=changed)


def _check_claude_on_bedrock(ctx: RequestContext, upstream: Upstream) -> None:
    """Anthropic's API reaches Bedrock's Claude models alone (InvokeModel with
    Anthropic's body; CountTokens with that body for a token count). A model id that
    hides its model (an application inference profile's ARN, a provisioned model's) is
    Bedrock's to check: it refuses another model's."""
    if not anthropic_bedrock.may_run_claude(upstream.upstream_model):
        raise BadRequestError(
            f"model '{ctx.model}' is a Bedrock model that does not speak Anthropic's "
            "Messages API (only Claude models do); send it to /v1/chat/completions or "
            f"Bedrock's Converse API{_fallbacks_instead(ctx)}",
            param="model",
            code="unsupported_model_for_route",
        )


def _claude_on_bedrock_request(
    ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream
) -> RequestPlan:
    """An Anthropic Messages call to Claude on Bedrock: InvokeModel (or its stream) with
    Anthropic's body as Bedrock takes it, signed with the provider's AWS credentials."""
    signer = _signer(upstream)
    translated = anthropic_bedrock.translate_request(
        parsed, ctx.request_headers.get("anthropic-beta"), upstream.provider.anthropic_betas
    )
    body = _json(translated)
    path = upstream.provider.path_prefix + anthropic_bedrock.request_path(
        upstream.upstream_model, stream=ctx.stream
    )
    headers = {"content-type": "application/json", "accept": "application/json"}
    return _signed_plan(signer, path, body, headers)


def _claude_count_on_bedrock_request(
    ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream
) -> RequestPlan:
    """An Anthropic token count for Claude on Bedrock: CountTokens with the InvokeModel
    body the Messages call would send, signed with the provider's AWS credentials."""
    signer = _signer(upstream)
    translated = anthropic_bedrock_count.translate_request(
        parsed, ctx.request_headers.get("anthropic-beta"), upstream.provider.anthropic_betas
    )
    body = _json(translated)
    path = upstream.provider.path_prefix + anthropic_bedrock_count.request_path(
        upstream.upstream_model
    )
    headers = {"content-type": "application/json", "accept": "application/json"}
    return _signed_plan(signer, path, body, headers)


def _signer(upstream: Upstream) -> AwsSigner:
    if upstream.signer is None:
        raise ServiceUnavailableError(
            f"provider '{upstream.provider.name}' has no AWS credentials",
            code="provider_not_configured",
        )
    return upstream.signer


def provider_api(upstream: Upstream) -> ProviderType:
    """The API the provider speaks for ``upstream``'s model, which decides how its answer
    is read: its type's own, but for Vertex, which serves Claude through Anthropic's
    Messages API and every other model through OpenAI's chat completions."""
    kind = upstream.provider.type
    if kind is ProviderType.VERTEX:
        claude = vertex_endpoints.is_claude(upstream.upstream_model)
        return ProviderType.ANTHROPIC if claude else ProviderType.OPENAI
    return kind


def _vertex_request(
    ctx: RequestContext, parsed: dict[str, Any], upstream: Upstream, raw: bytes
) -> RequestPlan:
    """A request to Vertex AI, with the provider's access token: Anthropic's Messages API
    (or its count) for Claude, an OpenAI chat completion translated to it for Claude, or
    passed to Vertex's OpenAI-compatible endpoint for any other model. The client's query
    string stays behind (the Anthropic SDK's ``?beta=true`` means nothing to Vertex)."""
    route = ctx.route
    assert route is not None
    gcp = upstream.provider.gcp
    assert gcp is not None  # the config requires it of a vertex provider
    prefix = upstream.provider.path_prefix
    model = upstream.upstream_model
    headers = {**_credentials(upstream), "content-type": "application/json"}
    removed: list[str] = []
    allowed = upstream.provider.anthropic_betas
    if route.api in ANTHROPIC_APIS and allowed is not None:
        kept = anthropic_vertex.kept_betas(ctx.request_headers.get("anthropic-beta"), allowed)
        if kept:
            headers["anthropic-beta"] = kept
        else:
            removed.append("anthropic-beta")
    if route.api is RouteApi.ANTHROPIC_MESSAGES:
        ctx.client_wants_usage = True  # Claude's streams always carry usage
        body = anthropic_vertex.messages_body(parsed)
        path = vertex_endpoints.claude_messages_path(gcp, model, stream=ctx.stream)
        return RequestPlan(_json(body), prefix + path, headers, removed)
    if route.api is RouteApi.ANTHROPIC_COUNT_TOKENS:
        body = anthropic_vertex.count_tokens_body(parsed, model)
        path = vertex_endpoints.claude_count_tokens_path(gcp)
        return RequestPlan(_json(body), prefix + path, headers, removed)
    if route.api in GEMINI_APIS:
        # Gemini's own body, as the client sent it unless the gateway changed it.
        operation = (
            gemini_api.COUNT_TOKENS
            if route.api is RouteApi.GEMINI_COUNT_TOKENS
            else gemini_api.STREAM_GENERATE_CONTENT
            if ctx.stream
            else gemini_api.GENERATE_CONTENT
        )
        path = vertex_endpoints.gemini_path(gcp, model, operation)
        counted = (
            gemini_api.vertex_count_body(parsed) if operation == gemini_api.COUNT_TOKENS else None
        )
        if counted is not None:
            return RequestPlan(_json(counted), prefix + path, headers)
        changed = ctx.body_changed or not raw
        return RequestPlan(_json(parsed) if changed else None, prefix + path, headers)
    if route.api is RouteApi.OPENAI_EMBEDDINGS:
        _check_vertex_embeddings(ctx, parsed, upstream)
        body = vertex_embeddings.translate_request(parsed, model)
        path = vertex_endpoints.predict_path(gcp, model)
        return RequestPlan(_json(body), prefix + path, headers)
    if route.api is not RouteApi.OPENAI_CHAT:
        raise _unsupported(ctx, ProviderType.VERTEX)
    ctx.client_wants_usage = client_asked_for_usage(ctx, parsed)
    if not vertex_endpoints.is_claude(model):
        return _openai_request(
            ctx,
            parsed,
            upstream,
            prefix + vertex_endpoints.openai_chat_path(gcp),
            vertex_endpoints.openai_model_name(model),
        )
    # Vertex's one API version predates the versions that limit sampling parameters. Its
    # Claude takes no image by URL ("URL sources are not supported").
    translated = openai_anthropic.translate_request(
        parsed, model, stream=ctx.stream, image_urls=False, inference_geo=False
    )
    if searches_the_web(translated):
        headers["anthropic-beta"] = VERTEX_WEB_SEARCH_BETA
    path = vertex_endpoints.claude_messages_path(gcp, model, stream=ctx.stream)
    return RequestPlan(_json(anthropic_vertex.messages_body(translated)), prefix + path, headers)


def _check_claude_on_vertex(ctx: RequestContext, upstream: Upstream) -> None:
    """Anthropic's API reaches Vertex's Claude models alone."""
    if not vertex_endpoints.is_claude(upstream.upstream_model):
        raise BadRequestError(
            f"model '{ctx.model}' is a Vertex AI model that does not speak Anthropic's "
            "Messages API (only Claude models do); send it to /v1/chat/completions"
            f"{_fallbacks_instead(ctx)}",
            param="model",
            code="unsupported_model_for_route",
        )


def _check_gemini_on_vertex(ctx: RequestContext, upstream: Upstream) -> None:
    """Gemini's API reaches Google's own models on Vertex alone (the Model Garden's
    partner models answer other APIs)."""
    if not vertex_endpoints.is_google_model(upstream.upstream_model):
        instead = "/v1/chat/completions"
        if vertex_endpoints.is_claude(upstream.upstream_model):
            instead += " or /v1/messages"
        raise BadRequestError(
            f"model '{ctx.model}' is a Vertex AI model that does not speak Gemini's API "
            f"(only Google's models do); send it to {instead}{_fallbacks_instead(ctx)}",
            param="model",
            code="unsupported_model_for_route",
        )


def _credentials(upstream: Upstream) -> dict[str, str]:
    source = upstream.token_source
    if source is not None:
        if source.pending:
            raise credentials_pending.unavailable()
        if source.token is None:
            # Only while its runtime closes (the process is stopping): start() minted one.
            raise ServiceUnavailableError(
                f"provider '{upstream.provider.name}' has no access token",
                code="provider_not_configured",
            )
        return source.request_headers()
    if not upstream.credential_headers:
        raise ServiceUnavailableError(
            f"provider '{upstream.provider.name}' has no credential configured",
            code="provider_not_configured",
        )
    return dict(upstream.credential_headers)


def _anthropic_headers(ctx: RequestContext, upstream: Upstream) -> dict[str, str]:
    headers = _credentials(upstream)
    if "anthropic-version" not in ctx.request_headers:
        headers["anthropic-version"] = upstream.provider.anthropic_version
    return headers


def _unsupported(ctx: RequestContext, kind: ProviderType) -> BadRequestError:
    route = ctx.route
    assert route is not None
    # The api the operator gave the route: an operation's twin (Bedrock's InvokeModel, a
    # Vertex client's call read as Anthropic's) is its route's to the operator.
    configured = ctx.runtime.routes.named(route.name)
    api = configured.api if configured is not None else route.api
    return BadRequestError(
        f"model '{ctx.model}' is served by a provider that speaks the {kind} API, "
        f"which this route ({api}) cannot translate to{_fallbacks_instead(ctx)}",
        param="model",
        code="unsupported_model_for_route",
    )


def _fallbacks_instead(ctx: RequestContext) -> str:
    """Where the refused model has fallbacks that answer the client's API (an Anthropic
    client's model on an OpenAI-compatible provider, Claude behind it): they take over
    when the model fails, never in its place (the client asked for that model, and would
    get another one on every request without a word), so the refusal names them and
    how to reach them. Only those the caller may ask for by name."""
    route, model, runtime = ctx.route, ctx.model, ctx.runtime
    assert route is not None
    if model is None or route.api not in FAILOVER_APIS:
        return ""
    chain = runtime.failover.get(runtime.canonical_model.get(model) or model)
    if not chain:
        return ""
    able = [
        name
        for name, upstream in list(chain.values())[1:]
        if serves_client_api(route.api, upstream)
        and (route.provider is None or upstream.provider.name == route.provider)
        and runtime.access.denial(ctx.identity, name, route.name) is None
    ]
    if not able:
        return ""
    listed = ", ".join(f"'{name}'" for name in able)
    return (
        f"; its fallbacks ({listed}) speak this API but serve only when '{model}' fails, "
        f"never in its place: ask for '{able[0]}' by name"
    )


def _no_such_api(
    ctx: RequestContext, kind: ProviderType, api: str, instead: str
) -> BadRequestError:
    """A request for a model of a provider type that lacks the endpoint (``_ONLY_OPENAI``)."""
    return BadRequestError(
        f"model '{ctx.model}' is served by a provider that speaks the {kind} API, which has "
        f"no {api}; {instead}",
        param="model",
        code="unsupported_model_for_route",
    )


def bedrock_tier_asked(
    api: RouteApi | None, body: Any, request_headers: dict[str, str]
) -> str | None:
    """The service tier a request to Bedrock asked for, when Bedrock serves an accepted
    request at it (``openai_bedrock_stream.SERVED_AS_ASKED``: it refuses a tier the model
    or region lacks before answering): what prices an answer of it cut before Bedrock
    named its tier, a stream's or a JSON answer's, a failover attempt's too
    (``stages.cut_answer``). An OpenAI client's ``service_tier`` as sent to Converse, a
    Converse call's ``serviceTier``, an InvokeModel call's ``X-Amzn-Bedrock-Service-Tier``;
    None for any other request, and for ``reserved``, which overflows to the standard
    tier unannounced."""
    asked: str | None = None
    if api is RouteApi.OPENAI_CHAT:
        asked = openai_bedrock.asked_service_tier(body)
    elif api is RouteApi.BEDROCK_CONVERSE and isinstance(body, dict):
        asked = openai_bedrock_stream.served_tier(body.get("serviceTier"))
    elif api is RouteApi.BEDROCK_INVOKE:
        asked = request_headers.get(anthropic_bedrock.SERVICE_TIER_HEADER)
    return asked if asked in openai_bedrock_stream.SERVED_AS_ASKED else None


def plan_response(
    ctx: RequestContext,
    status: int,
    headers: dict[str, str],
    kind: ProviderType,
    from_provider: bool = False,
) -> ResponsePlan:
    """How to read (and maybe rewrite) the provider's answer for this client."""
    if is_redirect(status):
        # Nothing to read: whatever usage its body reports, the model answered nothing.
        # On the lean path its headers have left; the client gets it as it was sent.
        return ResponsePlan(None) if ctx.lean_response else _redirect_plan(ctx, status)
    if status > MAX_HTTP_STATUS and not ctx.lean_response:
        message = f"the provider answered with an invalid HTTP status ({status})"
        return _upstream_error_plan(ctx, message)
    plan = _answer_plan(ctx, status, headers, kind, from_provider)
    if plan.streamed:
        framed = headers.get("content-type", "").startswith(AWS_EVENT_STREAM)
        plan = _stream_without_provider_credentials(ctx, plan, framed)
    if status < 400:
        # An error's encoding is read with its credentials (_without_provider_credentials).
        return _uncompressed(ctx, plan, headers.get("content-encoding", ""))
    return plan


def _uncompressed(ctx: RequestContext, plan: ResponsePlan, encoding: str) -> ResponsePlan:
    """``plan``, its reader fed the answer uncompressed when the provider compressed it
    although the gateway asked for none (``answer_encoding``); the client gets it
    uncompressed. Compressed, its usage could not be read, nor its text guarded."""
    if plan.translator is None or not readable_encoding(encoding):
        return plan
    limit = ctx.runtime.config.envoy.max_response_body_bytes
    # A stream's generated text, counted in its decoded bytes for the bill of a stream
    # without a usage report (stages.partial_usage): the compressed ones show none.
    route = ctx.route
    responses = route is not None and route.api is RouteApi.OPENAI_RESPONSES
    count = responses_delta_chars if responses else generated_chars
    if ctx.lean_response:
        # The headers have left, naming the provider's encoding: the client reads it.
        plan.translator = DecompressedAnswer(
            plan.translator, encoding, limit, streamed=plan.streamed, reencode=True, count=count
        )
        return plan
    shape = ctx.error_shape
    plan.translator = DecompressedAnswer(
        plan.translator,
        encoding,
        limit,
        streamed=plan.streamed,
        count=count,
        broken_body=lambda too_large: (
            response_too_large().body(shape)
            if too_large
            else _status_error(
                BROKEN_STATUS, shape, "the provider's compressed answer could not be read"
            )
        ),
    )
    for name in ("content-encoding", "content-length"):
        if name not in plan.remove_headers:
            plan.remove_headers.append(name)
    return plan


def _answer_plan(
    ctx: RequestContext,
    status: int,
    headers: dict[str, str],
    kind: ProviderType,
    from_provider: bool,
) -> ResponsePlan:
    content_type = headers.get("content-type", "")
    route = ctx.route
    assert route is not None
    anthropic_client = route.api is RouteApi.ANTHROPIC_MESSAGES
    if status >= 400:
        if not from_provider and _envoy_reply(ctx, headers):
            # Envoy's own reply (provider unreachable, timeout): already shaped by the
            # bootstrap's local_reply_config, not the provider's to translate. Under a
            # Gateway API controller's Envoy, which has no such mappers, still Envoy's
            # plain text: shaped here, as the bootstrap would have.
            if not ctx.lean_response and "json" not in content_type:
                return _envoy_reply_shaped(ctx, status)
            # In OpenAI's shape: an AWS SDK would read no message and no exception in it.
            if route.api in BEDROCK_RUNTIME_APIS:
                return _bedrock_shaped(status)
            if ctx.error_shape == "google":
                return _google_shaped(status)
            return ResponsePlan(None)
        return _without_provider_credentials(
            ctx,
            _error_plan(ctx, status, headers, kind, content_type),
            status,
            headers.get("content-encoding", ""),
        )
    # Read by its own framing, not by what the client asked: a provider or a proxy may
    # stream a request that did not ask (read as JSON, its usage chunk would go unread
    # and the answer be charged the prompt's estimate alone), or answer a stream in one
    # JSON object. Only a header check: the body is parsed by one reader either way.
    streaming = content_type.startswith(SSE) or content_type.startswith(AWS_EVENT_STREAM)
    # The usage chunk the gateway asked for is hidden; one the provider sent unasked
    # (to a request that was no stream) reaches the client as it came.
    hide_usage = ctx.stream and not ctx.client_wants_usage
    created = int(ctx.started_wall)
    if route.api is RouteApi.ANTHROPIC_COUNT_TOKENS and kind is ProviderType.BEDROCK:
        # Bedrock's {"inputTokens": N} as Anthropic's count, read as no usage either.
        counted = anthropic_bedrock_count.CountTranslator()
        json_headers = {"content-type": "application/json"}
        return ResponsePlan(counted, set_headers=json_headers, remove_headers=["content-length"])
    if route.api in UNMETERED_APIS:
        # {"input_tokens": N} is a count, not usage: read as usage it would be billed
        # and counted in aigw_tokens_consumed_total for tokens nobody generated. A
        # moderation's classification carries no usage at all: free, as at OpenAI.
        return ResponsePlan(None)
    if route.api is RouteApi.OPENAI_EMBEDDINGS:
        # Vertex's own answer, unless a failover attempt's filter already translated it
        # (the client's filter then reads it as OpenAI's): Vertex's models speak OpenAI's
        # chat API, so ``kind`` alone does not tell its embeddings apart.
        if ctx.provider_type is ProviderType.VERTEX and (
            from_provider or ctx.failover_model is None
        ):
            return ResponsePlan(
                _vertex_embeddings_translator(ctx), remove_headers=["content-length"]
            )
        if kind is ProviderType.OPENAI:
            return ResponsePlan(openai_embeddings.EmbeddingsReader())
        return ResponsePlan(
            _bedrock_embeddings_translator(ctx, headers), remove_headers=["content-length"]
        )
    if route.api is RouteApi.RERANK:
        return ResponsePlan(openai_rerank.RerankReader(ctx.estimated_prompt_tokens()))
    if route.api is RouteApi.OPENAI_RESPONSES:
        # The image generation tool's model as asked, when the response names none.
        image_model = tool_model((ctx.body or {}).get("tools"))
        if streaming:
            # What a stream cut while its tool drew is charged per picture: its reserve.
            picture = tool_picture_allowance(ctx.body or {})
            responses_events = openai_responses.EventStreamReader(image_model, picture)
            return ResponsePlan(responses_events, streamed=True)
        return ResponsePlan(openai_responses.ResponseReader(image_model))
    if route.api is RouteApi.OPENAI_RESPONSES_COMPACT:
        # Never streamed (a body asking is refused): a response's usage, in one object.
        return ResponsePlan(openai_responses.ResponseReader())
    if route.api is RouteApi.OPENAI_IMAGES:
        if streaming:
            body = ctx.body or {}
            pictures = openai_images.ImageEventReader(
                images_api.picture_allowance(body), images_api.pictures_asked(body)
            )
            return ResponsePlan(pictures, streamed=True)
        return ResponsePlan(openai_images.ImagesReader())
    if route.api is RouteApi.OPENAI_AUDIO:
        return _audio_answer_plan(ctx, streaming, content_type)
    if route.api is RouteApi.BEDROCK_CONVERSE:
        asked = bedrock_tier_asked(route.api, ctx.body, ctx.request_headers)
        if streaming:
            frames = bedrock_bedrock.ConverseStreamReader(asked_tier=asked)
            return ResponsePlan(frames, streamed=True)
        return ResponsePlan(bedrock_bedrock.ConverseReader(asked_tier=asked))
    if route.api is RouteApi.BEDROCK_INVOKE:
        # The tier Bedrock served: in its answer's headers, not in Claude's usage.
        served = anthropic_bedrock.served_tier(headers)
        # A stream's prompt as its headers count it (a Bedrock-compatible server's; Bedrock
        # counts in the last chunk): the bill of a stream cut before its counts.
        prompt = bedrock_invoke.header_prompt(headers)
        if not reads_as_claude(ctx.upstream_model or "", ctx.body or {}):
            # Another family's answer: billed by the counts Bedrock reports for any model.
            if streaming:
                return ResponsePlan(bedrock_invoke.ModelStreamReader(served, prompt), True)
            generates = not invokes_embeddings(ctx)
            return ResponsePlan(bedrock_invoke.TokenHeaderReader(headers, generates))
        if streaming:
            return ResponsePlan(bedrock_invoke.InvokeStreamReader(served, prompt), True)
        return ResponsePlan(_claude_message_reader(served, headers))
    if route.api is RouteApi.GEMINI_GENERATE_CONTENT:
        if streaming:
            candidates = gemini_api.choices(ctx.body or {})
            return ResponsePlan(gemini_gemini.StreamReader(candidates), streamed=True)
        return ResponsePlan(gemini_gemini.GenerateContentReader())
    if route.api is RouteApi.OPENAI_COMPLETIONS:
        reader = openai_completions.response_reader(
            streaming=streaming,
            hide_usage=hide_usage,
            choices=returned_choices(ctx.body) if ctx.body is not None else 1,
        )
        return ResponsePlan(reader, streamed=streaming)
    if anthropic_client and kind is ProviderType.BEDROCK:
        # The tier Bedrock served: in its answer's headers, not in Claude's usage.
        served = anthropic_bedrock.served_tier(headers)
        if streaming:
            claude = anthropic_bedrock.StreamTranslator(served_tier=served)
            sse = {"content-type": SSE}
            return ResponsePlan(
                claude, streamed=True, set_headers=sse, remove_headers=["content-length"]
            )
        return ResponsePlan(_claude_message_reader(served, headers))
    if anthropic_client and streaming and ctx.provider_type is ProviderType.VERTEX:
        # Without Vertex's own events; sent in whole events, so of another length.
        vertex_stream = anthropic_vertex.EventStreamReader()
        return ResponsePlan(vertex_stream, streamed=True, remove_headers=["content-length"])
    if anthropic_client:
        if streaming:
            return ResponsePlan(anthropic_anthropic.EventStreamReader(), streamed=True)
        return ResponsePlan(anthropic_anthropic.MessageReader())
    if kind is ProviderType.OPENAI:
        if streaming:
            chat = route.api is RouteApi.OPENAI_CHAT
            asked_choices = openai_inputs.choices(ctx.body) if chat and ctx.body is not None else 1
            reader = openai_openai.ChunkStreamReader(
                hide_usage_chunk=hide_usage, choices=asked_choices
            )
            return ResponsePlan(reader, streamed=True)
        return ResponsePlan(openai_openai.CompletionReader())
    # Translated answers change length: let Envoy send them chunked.
    rewritten = ["content-length"]
    if kind is ProviderType.ANTHROPIC:
        if streaming:
            stream = openai_anthropic.StreamTranslator(
                include_usage=ctx.client_wants_usage,
                request_id=ctx.request_id,
                created=created,
                bill_apart=from_provider,
            )
            return ResponsePlan(stream, streamed=True, remove_headers=rewritten)
        completion = openai_anthropic.CompletionTranslator(
            request_id=ctx.request_id, created=created, bill_apart=from_provider
        )
        return ResponsePlan(completion, remove_headers=rewritten)
    # The name the client asked for (a model group's, not the member's that served).
    model = ctx.asked_model or ""
    asked = bedrock_tier_asked(RouteApi.OPENAI_CHAT, ctx.body, ctx.request_headers)
    if streaming:
        events = openai_bedrock.StreamTranslator(
            model=model,
            include_usage=ctx.client_wants_usage,
            request_id=ctx.request_id,
            created=created,
            asked_tier=asked,
            bill_apart=from_provider,
        )
        return ResponsePlan(
            events, streamed=True, set_headers={"content-type": SSE}, remove_headers=rewritten
        )
    converse = openai_bedrock.CompletionTranslator(
        model=model,
        request_id=ctx.request_id,
        created=created,
        asked_tier=asked,
        bill_apart=from_provider,
    )
    return ResponsePlan(converse, remove_headers=rewritten)


def _claude_message_reader(
    served: str | None, headers: dict[str, str]
) -> anthropic_bedrock.MessageReader:
    """Claude's JSON answer from InvokeModel, with what Bedrock's token headers counted
    before its body: both counts (which bill an answer cut before its body), else the
    prompt count alone (which such an answer is charged beside its allowance)."""
    return anthropic_bedrock.MessageReader(
        served_tier=served,
        counted=bedrock_invoke.header_usage(headers),
        prompt=bedrock_invoke.header_prompt(headers),
    )


def _bedrock_embeddings_translator(
    ctx: RequestContext, headers: dict[str, str]
) -> ResponseTranslator:
    """Cohere Embed's answer or Titan's, by the model id the request went to. Bedrock's
    token count is in the response headers, which only this phase sees: Cohere's bill,
    and Titan's when its body has no count or never comes (a cut answer)."""
    body = ctx.body or {}
    model = ctx.asked_model or ""
    base64_vectors = body.get("encoding_format") == "base64"
    if bedrock_cohere_embeddings.is_cohere_model(ctx.upstream_model or ""):
        return bedrock_cohere_embeddings.EmbeddingTranslator(
            model=model,
            base64_vectors=base64_vectors,
            texts=bedrock_cohere_embeddings.texts_sent(body),
            input_tokens=bedrock_cohere_embeddings.input_token_count(headers),
        )
    return bedrock_embeddings.EmbeddingTranslator(
        model=model,
        base64_vectors=base64_vectors,
        input_tokens=bedrock_cohere_embeddings.input_token_count(headers),
    )


def _vertex_embeddings_translator(ctx: RequestContext) -> ResponseTranslator:
    """Vertex's ``:predict`` answer as OpenAI's list, one vector per text sent."""
    body = ctx.body or {}
    return vertex_embeddings.EmbeddingTranslator(
        model=ctx.asked_model or "",
        base64_vectors=body.get("encoding_format") == "base64",
        texts=vertex_embeddings.texts_sent(body),
    )


# A provider's answer to the gateway's own key or account, not to anything of the client's.
CREDENTIAL_REFUSALS = frozenset({401, 402, 403})


def _refused_plan(ctx: RequestContext, status: int) -> ResponsePlan:
    """A provider of the client's own API refused the gateway's credential or account.

    Passed through as it came, OpenAI's 401 names a fragment of the gateway's key
    ("Incorrect API key provided: sk-proj-****abcd") and tells the client to fix a key
    it never had. The body becomes the gateway's ``upstream_credentials_refused`` error
    in the client's shape, the provider's words kept without anything that looks like a
    key or a piece of the provider's. The status stays the provider's: these pairs may
    take the lean path, where the headers have left before the body is seen, and an
    answer must not depend on the path it took.
    """
    shape = ctx.error_shape
    upstream = ctx.upstream

    def replace(body: bytes) -> bytes:
        return refused_body(body, status, upstream, shape)

    return ResponsePlan(
        ErrorRewriter(replace),
        set_headers={"content-type": "application/json"},
        remove_headers=["content-length"],
    )


def refused_body(body: bytes, status: int, upstream: Upstream | None, shape: str) -> bytes:
    """The gateway's ``upstream_credentials_refused`` error in the client's ``shape`` for a
    provider's refusal of the gateway's credential (``_refused_plan``)."""
    detail, said = _provider_error(body, status)
    return credentials_refused(detail, said, provider_secrets(upstream)).body(shape)


def provider_secrets(upstream: Upstream | None) -> list[str]:
    """The provider credential the gateway sent, as a provider could quote it back."""
    if upstream is None:
        return []
    values = upstream.credential_headers.values()
    secrets = [value.removeprefix("Bearer ").strip() for value in values]
    if upstream.token_source is not None:
        secrets.extend(upstream.token_source.recent_tokens)
    if upstream.signer is not None:
        secrets.extend(_SIGNED_WITH.get(upstream.signer, ()))
    return secrets


# What each signer's requests carried of its AWS credentials: the access key id (it names
# the account) and, under temporary credentials, the session token, which signs nothing
# but is a bearer secret of its own. The secret key never leaves the gateway (only a
# signature made with it does). The last two sets, so that the answer to a request signed
# just before a refresh is still searched for the credentials it carried.
_SIGNED_WITH: WeakKeyDictionary[AwsSigner, tuple[str, ...]] = WeakKeyDictionary()
_KEPT_SIGNED = 4
_ACCESS_KEY_ID = re.compile(r"Credential=([^/,\s]+)/")


def _signed_plan(
    signer: AwsSigner, path: str, body: bytes, headers: dict[str, str], *, send_body: bool = True
) -> RequestPlan:
    """The plan of a POST to AWS with ``body`` (sent as rewritten unless not ``send_body``:
    the client's own bytes go), signed; one whose body is too large to hash on the event
    loop carries its ``signature`` to finish instead (``sign_pending``)."""
    plan = RequestPlan(body if send_body else None, path, headers)
    if len(body) >= HASHED_OFF_LOOP_BYTES:
        plan.signature = PendingSignature(signer, path, body, dict(headers))
    else:
        headers.update(_signed(signer, "POST", path, body, headers))
    return plan


async def sign_pending(plan: RequestPlan) -> dict[str, str]:
    """Sign a plan whose body was too large to hash on the event loop: hashed in a thread
    (every other request goes on meanwhile), then signed with that hash. The signature
    headers, also added to the plan's ``headers``; none when the plan was signed already."""
    pending = plan.signature
    if pending is None:
        return {}
    digest = await asyncio.to_thread(payload_sha256, pending.body)
    signed = _signed(pending.signer, "POST", pending.path, pending.body, pending.headers, digest)
    plan.headers.update(signed)
    plan.signature = None
    return signed


def _signed(
    signer: AwsSigner,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    body_sha256: str | None = None,
) -> dict[str, str]:
    """``signer.sign()``, noting what of the credentials the request carries (``_SIGNED_WITH``)."""
    signed = signer.sign(method, path, body, headers, body_sha256)
    found = _ACCESS_KEY_ID.search(signed.get("authorization", ""))
    sent = (found.group(1) if found else "", signed.get("x-amz-security-token", ""))
    known = _SIGNED_WITH.get(signer, ())
    if not all(value in known for value in sent if value):
        fresh = (value for value in (*sent, *known) if value)
        _SIGNED_WITH[signer] = tuple(dict.fromkeys(fresh))[:_KEPT_SIGNED]
    return signed


def _provider_error(body: bytes, status: int) -> tuple[str, str]:
    """The error's code (else type, else status) and message, from OpenAI's, Anthropic's
    or Google's error shape (which Vertex's OpenAI-compatible endpoint may wrap in a
    one-element list); a body in none gives the status alone."""
    try:
        document = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, list) and len(document) == 1:
        document = document[0]
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        # Bedrock's shape: the message alone, its name in a header.
        said = document.get("message") if isinstance(document, dict) else None
        return f"HTTP {status}", said[:MAX_PROVIDER_MESSAGE] if isinstance(said, str) else ""
    code = error.get("code") or error.get("type")
    message = error.get("message")
    detail = code if isinstance(code, str) and code else f"HTTP {status}"
    said = message[:MAX_PROVIDER_MESSAGE] if isinstance(message, str) else ""
    return without_secrets(detail)[:100], said


def _without_provider_credentials(
    ctx: RequestContext, plan: ResponsePlan, status: int, encoding: str = ""
) -> ResponsePlan:
    """``plan``, reading the provider's error with every provider credential of the gateway
    cut out first.

    Errors other than a refusal of the gateway's key (``_refused_plan``) pass on the
    provider's words, often its whole body. A provider that quotes the request's headers
    back (a proxy in front of a model server, one in debug mode, a validation error
    listing what it was sent) would hand the client the gateway's key. Each one, in each
    form a provider could quote it (``quoted_forms``), is replaced by as many asterisks,
    so a body passed on keeps its length (and its ``content-length``, already sent on the
    lean path). Every provider's, not only this request's: a failover answer comes from
    whichever member answered last.

    A compressed body (``encoding``: the gateway asks for none, a provider may compress
    anyway) would hide the key from that search: it is read uncompressed and sent so;
    one in an encoding the gateway cannot read (or larger, uncompressed, than the
    largest answer Envoy buffers) is not passed on at all: the client gets the status."""
    needles = _error_needles(ctx)
    compressed = encoding.strip().lower() not in ("", "identity")
    if not needles and not compressed:
        return plan

    def scrub(body: bytes) -> bytes:
        return starred(body, needles)

    if compressed and ctx.lean_response:
        # The headers have left, naming the provider's encoding (the lean path knows
        # only the gzip and zlib it can tell by their first bytes): the error is read
        # uncompressed, and compressed again if the search changed it.
        limit = ctx.runtime.config.envoy.max_response_body_bytes
        translator = plan.translator
        if translator is None:
            translator = _ScrubbedError(scrub)
        elif isinstance(translator, ErrorRewriter):
            translator.read_first(scrub)
        plan.translator = DecompressedAnswer(
            translator, encoding, limit, streamed=False, reencode=True, broken_body=_nothing
        )
        return plan

    read = scrub
    if compressed:
        limit = ctx.runtime.config.envoy.max_response_body_bytes

        def read(body: bytes) -> bytes:
            return scrub(decoded(body, encoding, limit) or b"")

        for name in ("content-encoding", "content-length"):
            if name not in plan.remove_headers:
                plan.remove_headers.append(name)
    translator = plan.translator
    if translator is None and compressed:
        shape = ctx.error_shape
        plan.translator = ErrorRewriter(lambda body: read(body) or _status_error(status, shape))
    elif translator is None:
        plan.translator = _ScrubbedError(scrub)
    elif isinstance(translator, ErrorRewriter):
        translator.read_first(read)
    return plan


def _stream_without_provider_credentials(
    ctx: RequestContext, plan: ResponsePlan, framed: bool
) -> ResponsePlan:
    """A streamed ``plan`` whose reader is fed the provider's bytes with every provider
    credential of the gateway, and the key or token the request presented, cut out
    (``_ScrubbedStream``; ``_ScrubbedFrames`` for an AWS event stream, ``framed``): an
    error event inside a stream quotes the provider's words as an error body does (an
    invalid value the client sent, its own key in it), to the client and, as the
    request's error, to the log line. The client's key adds its forms to the search each
    chunk pays anyway (within the noise of a microsecond per chunk)."""
    needles = _error_needles(ctx)
    if needles and plan.translator is not None:
        scrubbed = _ScrubbedFrames if framed else _ScrubbedStream
        plan.translator = scrubbed(plan.translator, needles)
    return plan


def without_provider_credentials(ctx: RequestContext, body: bytes) -> bytes:
    """``body`` with every provider credential of the gateway starred out, its length
    kept (``_credential_needles``): a success answer that turned out to be the provider's
    error (``translators.answer_errors``) quotes what it was sent as error bodies do."""
    needles = _credential_needles(ctx)
    return starred(body, needles) if needles else body


def scrub_answer_error(ctx: RequestContext, error: ProviderAnswerError) -> None:
    """Star the gateway's credentials for the answering provider out of the words of a
    provider's error found in a success answer (``translators.answer_errors``), before a
    log line, the client or the downstream filter (``attempt_report``) reads them."""
    error.message = without_secrets(error.message, provider_secrets(ctx.upstream))


def _error_needles(ctx: RequestContext) -> tuple[bytes, ...]:
    """What a provider's error answer is searched for: every provider credential
    (``_credential_needles``), and the key or token the request presented. The provider
    never got that one from the gateway, but it gets what the client wrote where its key
    does not belong (a role, a stop sequence), and its 400 quotes the value ("Invalid
    value: '...'"): the client's error would show its own key to whatever logs it, as
    the gateway's own refusals never do (``credential_cleaner``). A stream's
    error event quotes it as an error answer does: streams are searched for it too
    (``_stream_without_provider_credentials``); a success answer is not."""
    # By module, when called: the stages package imports this one.
    from extproc.credential_cleaner import echoed_credential

    needles = _credential_needles(ctx)
    credential = echoed_credential(ctx)
    if credential is None:
        return needles
    # Not through the cache of the provider credentials' forms: a key per client.
    forms = {*needles, *quoted_forms.__wrapped__((credential,))}
    return tuple(sorted(forms, key=len, reverse=True))


def _credential_needles(ctx: RequestContext) -> tuple[bytes, ...]:
    """Every provider credential the gateway holds, in every form it is searched for."""
    secrets = dict.fromkeys(
        secret
        for upstream in ctx.runtime.provider_upstreams.values()
        for secret in provider_secrets(upstream)
        if len(secret) >= MIN_SEARCHED_SECRET
    )
    return quoted_forms(tuple(secrets)) if secrets else ()


def _nothing(too_large: bool) -> bytes:
    """No body: a compressed error the lean path could not read is not passed on."""
    return b""


class ErrorRewriter:
    """Buffers a provider's error answer and rewrites it for the client's API."""

    def __init__(self, rewrite: Callable[[bytes], bytes]) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None  # the error's own status is kept (or set at headers)
        self._rewrite = rewrite
        self._parts: list[bytes] = []

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        self._parts.append(chunk)
        if not end_of_stream:
            return b""
        return self._rewrite(b"".join(self._parts))

    def read_first(self, change: Callable[[bytes], bytes]) -> None:
        """Apply ``change`` to the provider's whole body before the rewrite reads it."""
        rewrite = self._rewrite
        self._rewrite = lambda body: rewrite(change(body))


class _ScrubbedError(ErrorRewriter):
    """A provider's error passed on as it came (no body mutation at all) unless the
    scrub changed it (``_without_provider_credentials``)."""

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if end_of_stream and not self._parts:
            scrubbed = self._rewrite(chunk)
            return None if scrubbed == chunk else scrubbed
        return super().feed(chunk, end_of_stream)


class _ScrubbedStream(WrappedReader):
    """A stream's reader, fed each chunk with the gateway's provider credentials cut out.

    The cost per chunk is a substring search for each credential over the bytes the
    gateway holds anyway, no parse; a chunk without any reaches the reader, and the
    client, as it came. A credential split over two chunks is found too: a chunk's tail
    that begins one waits for the next chunk (in an event stream, such a tail is inside
    an event the client cannot read before its end anyway). Everything else is the
    reader's: its usage, its failure (whose message the log line then records without
    the credential) and whatever else the stages read of it."""

    def __init__(self, reader: ResponseTranslator, needles: tuple[bytes, ...]) -> None:
        super().__init__(reader)
        self._needles = needles
        self._held = b""

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        data = self._held + chunk if self._held else chunk
        self._held = b""
        data = starred(data, self._needles)
        if not end_of_stream:
            cut = unfinished_at(data, self._needles)
            if cut < len(data):
                data, self._held = data[:cut], data[cut:]
        out = self._reader.feed(data, end_of_stream)
        if out is None and data is not chunk:
            return data  # the reader passes on what it was fed: not the provider's chunk
        return out


class _ScrubbedFrames(_ScrubbedStream):
    """An AWS event stream's reader, fed whole messages with the credentials cut out.

    A message's CRC runs over its payload, so one whose credential was starred out
    gets a CRC of what it now holds (the client's SDK, and the gateway's own reader of
    a translated stream, refuse a message whose CRC does not match, and would report a
    broken stream instead of the provider's error). A message split over chunks waits
    for its end, which the client cannot read before anyway: searched whole, no
    credential is ever split. Messages that come whole, as nearly all do, pass as they
    came. Bytes that frame no message are searched as any stream's."""

    def __init__(self, reader: ResponseTranslator, needles: tuple[bytes, ...]) -> None:
        super().__init__(reader, needles)
        self._framed = True

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if not self._framed:
            return super().feed(chunk, end_of_stream)
        data = self._held + chunk if self._held else chunk
        self._held = b""
        whole = aws_eventstream.whole_messages(data)
        if whole is None:
            # No event stream after all: searched as any stream's bytes from here on.
            self._framed = False
            out = super().feed(data, end_of_stream)
            return data if out is None and data is not chunk else out
        if not end_of_stream and whole < len(data):
            data, self._held = data[:whole], data[whole:]
        scrubbed = starred(data, self._needles)
        if scrubbed is not data:
            scrubbed = aws_eventstream.with_fresh_checksums(data, scrubbed)
        out = self._reader.feed(scrubbed, end_of_stream)
        if out is None and scrubbed is not chunk:
            return scrubbed  # the reader passes on what it was fed: not the provider's chunk
        return out


def _vertex_error_plan(ctx: RequestContext, status: int, kind: ProviderType) -> ResponsePlan:
    """A Vertex error: Google's shape (its front's) in the client's; the model's own
    errors as from its API's provider: Claude's translated for an OpenAI client, the
    others as they came."""
    route = ctx.route
    assert route is not None
    shape = ctx.error_shape
    if shape == "google":
        return _google_page_rewritten(status)
    translated = kind is ProviderType.ANTHROPIC and route.api not in ANTHROPIC_APIS

    def replace(body: bytes) -> bytes:
        rewritten = vertex_errors.in_client_shape(status, body, shape)
        if rewritten is not None:
            return rewritten
        if translated:
            return openai_anthropic.translate_error(status, body)[1]
        if not _json_object(body):
            # A page (Google's front, a proxy): the client's SDK reads no error in it.
            return _status_error(status, shape)
        return body

    set_headers = {"content-type": "application/json"}
    if translated:
        # Anthropic's statuses as an OpenAI client knows them (its 529 is a 503).
        set_headers[":status"] = str(openai_anthropic.translate_error(status, b"")[0])
    return ResponsePlan(
        ErrorRewriter(replace), set_headers=set_headers, remove_headers=["content-length"]
    )


def _google_page_rewritten(status: int) -> ResponsePlan:
    """Vertex's error for a client of Gemini's API: Google's JSON error passes as it came
    (the SDK reads it), but a page (Google's front answers some 502s and 503s with an
    HTML page; a proxy, the egress proxy, its own) or no body at all becomes Google's
    error with the provider's status. As it came, google-genai raised the whole page as
    its message, with the reason phrase ("Service Unavailable") as its ``status`` instead
    of Google's name (``UNAVAILABLE``), which callers and Gemini CLI compare."""

    def rewrite(body: bytes) -> bytes:
        if not _json_object(body):
            return _status_error(status, "google")
        # A proxy's JSON error in another API's shape, which google-genai reads none of.
        return foreign_errors.in_client_shape(status, body, "google") or body

    return ResponsePlan(
        _ScrubbedError(rewrite),
        set_headers={"content-type": "application/json"},
        remove_headers=["content-length"],
    )


def _foreign_errors_rewritten(
    ctx: RequestContext, status: int, headers: dict[str, str]
) -> ResponsePlan:
    """A provider's JSON error for a client of the provider's own API: passed on as it
    came, unless it is in another API's shape (``foreign_errors``: a proxy's, Gemini's
    OpenAI-compatible endpoint's list, Anthropic's 529 from an OpenAI-compatible
    endpoint), which the client's SDK cannot read: that one is written in the client's
    shape, its status kept. No body at all (or a compressed one the gateway could not
    read) is the status alone, in the client's shape. A Bedrock client's error without
    ``x-amzn-errortype`` (a proxy's; AWS always names its exception) is named by its
    status, which botocore raises and retries by. The length changes: on the lean path
    Envoy has dropped ``content-length`` already."""
    shape = ctx.error_shape

    def rewrite(body: bytes) -> bytes:
        rewritten = foreign_errors.in_client_shape(status, body, shape)
        return rewritten or body or _status_error(status, shape)

    set_headers = {}
    if shape == "bedrock" and BEDROCK_ERROR_TYPE_HEADER not in headers:
        set_headers[BEDROCK_ERROR_TYPE_HEADER] = bedrock_exception(status)
    return ResponsePlan(
        _ScrubbedError(rewrite), set_headers=set_headers, remove_headers=["content-length"]
    )


def _json_object(body: bytes) -> bool:
    """Whether ``body`` is a JSON object (or a list of them: Google's wrapping)."""
    try:
        document = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict | list)


def _status_error(status: int, shape: str, message: str | None = None) -> bytes:
    """The client's error for a provider's error answer in no JSON shape: its status alone
    (or ``message``)."""
    message = message or f"the provider answered with HTTP {status}"
    if shape == "anthropic":
        return anthropic_error_body(message, status)
    if shape == "bedrock":
        return bedrock_error_body(message, "upstream_error")
    if shape == "google":
        return google_error_body(message, status)
    kind_name = "server_error" if status >= 500 else "invalid_request_error"
    return error_body(message, kind_name, code="upstream_error")


def _redirect_plan(ctx: RequestContext, status: int) -> ResponsePlan:
    """A provider's (or a proxy's) redirect: the client's 502, in its API's shape, its
    ``location`` dropped. Passed on, the client read it as an answer (a translated one
    as a completion, billed by the usage its body showed), or its SDK followed it past
    the gateway, with the client's key for the gateway, to a URL that speaks the
    provider's API, not the client's."""
    plan = _upstream_error_plan(
        ctx,
        f"the provider answered with a redirect (HTTP {status}), which the gateway does not follow",
    )
    plan.remove_headers.append("location")
    return plan


def _upstream_error_plan(ctx: RequestContext, message: str) -> ResponsePlan:
    """The client's 502, in its API's shape, for a provider's answer that is none: a
    status HTTP does not define (600-999, which some servers and proxies send for errors
    of their own, which RFC 9110, section 15, tells clients to take for a server error)
    or a redirect. Passed on, it reached SDKs as no status they know, and a failover
    chain stopped at it: Envoy retries 500-599 alone. On the lean path its headers have
    already left; the client gets it as the provider sent it."""
    shape = ctx.error_shape
    if shape == "bedrock":
        plan = _bedrock_shaped(UpstreamError.status, message)
    else:
        plan = ResponsePlan(
            ErrorRewriter(lambda _: _status_error(UpstreamError.status, shape, message)),
            set_headers={"content-type": "application/json"},
            remove_headers=["content-length"],
        )
    plan.set_headers[":status"] = str(UpstreamError.status)
    # The body is the gateway's own, in plain JSON, whatever encoded the provider's.
    plan.remove_headers.append("content-encoding")
    return plan


def _envoy_reply(ctx: RequestContext, headers: dict[str, str]) -> bool:
    """Whether an error answer is Envoy's own reply, not the provider's: its router's
    ``x-envoy-upstream-service-time`` is missing (only a provider's answer carries it),
    and Envoy's details, when it sent them, do not say ``via_upstream``: Envoy Gateway's
    router suppresses its x-envoy-* headers, so there the details alone tell a provider's
    error (translated, its credentials cut out) from Envoy's reply. Not for a failover
    chain's attempt, whose own answer comes through the router without that header."""
    if ENVOY_UPSTREAM_TIME in headers:
        return False
    return ctx.failover_model is not None or ctx.response_details != VIA_UPSTREAM


def _envoy_reply_shaped(ctx: RequestContext, status: int) -> ResponsePlan:
    """Envoy's own reply in plain text ("no healthy upstream", "upstream request
    timeout") as the error the gateway's own bootstrap renders for it
    (``envoy_replies``), in the client's API's shape: its SDK reads the message and
    the code, not Envoy's words. Envoy's details pick the error when Envoy sent them,
    else its text (which names the same reset reason); a status the bootstrap changes
    (a full circuit breaker's 503) is changed only from the details, known now, before
    the body. Envoy's other headers (``retry-after``) are kept."""
    shape = ctx.error_shape
    details = ctx.response_details
    error = envoy_reply_error(status, details or "")

    def replace(body: bytes) -> bytes:
        said = details if details is not None else body.decode("utf-8", "replace")
        named = envoy_reply_error(status, said)
        named.status = error.status  # its headers, and the status, have left
        return named.body(shape)

    set_headers = {"content-type": "application/json", ":status": str(error.status)}
    if shape == "bedrock":
        set_headers[BEDROCK_ERROR_TYPE_HEADER] = bedrock_exception(error.status)
    return ResponsePlan(
        ErrorRewriter(replace), set_headers=set_headers, remove_headers=["content-length"]
    )


def _bedrock_shaped(status: int, message: str | None = None) -> ResponsePlan:
    """An error a Converse client's SDK cannot read (Envoy's own reply, in OpenAI's
    shape; a proxy's page) as Bedrock's: ``message`` (else the OpenAI error's message
    and code) in the body, the exception's name in ``x-amzn-errortype``, which botocore
    raises and retries by."""

    def replace(body: bytes) -> bytes:
        if message is not None:
            return bedrock_error_body(message)
        detail, said = _provider_error(body, status)
        code = None if detail.startswith("HTTP ") else detail
        return bedrock_error_body(said or f"the gateway answered with HTTP {status}", code)

    set_headers = {
        "content-type": "application/json",
        BEDROCK_ERROR_TYPE_HEADER: bedrock_exception(status),
    }
    return ResponsePlan(
        ErrorRewriter(replace), set_headers=set_headers, remove_headers=["content-length"]
    )


def _google_shaped(status: int) -> ResponsePlan:
    """Envoy's own reply (in OpenAI's shape) as Google's APIs shape errors, which Gemini's
    clients read (``error.status``)."""

    def replace(body: bytes) -> bytes:
        _, said = _provider_error(body, status)
        return google_error_body(said or f"the gateway answered with HTTP {status}", status)

    return ResponsePlan(
        ErrorRewriter(replace),
        set_headers={"content-type": "application/json"},
        remove_headers=["content-length"],
    )


def _error_plan(
    ctx: RequestContext, status: int, headers: dict[str, str], kind: ProviderType, content_type: str
) -> ResponsePlan:
    route = ctx.route
    assert route is not None
    json_body = "json" in content_type
    rewritten = ["content-length"]
    json_headers = {"content-type": "application/json"}
    if ctx.provider_type is ProviderType.VERTEX:
        if status not in CREDENTIAL_REFUSALS:
            return _vertex_error_plan(ctx, status, kind)
        # Never on the lean path (whose headers leave before the body is seen): the
        # gateway's 502, as from Bedrock, not a 401 that tells the client its key is wrong.
        refused = _refused_plan(ctx, status)
        refused.set_headers[":status"] = str(UpstreamError.status)
        return refused
    if route.api in ANTHROPIC_APIS and kind is ProviderType.BEDROCK:
        error_type = headers.get("x-amzn-errortype")
        client_status, _ = anthropic_bedrock.translate_error(status, b"", error_type)
        return ResponsePlan(
            ErrorRewriter(
                lambda body: anthropic_bedrock.translate_error(status, body, error_type)[1]
            ),
            set_headers={**json_headers, ":status": str(client_status)},
            remove_headers=rewritten,
        )
    if (
        route.api in ANTHROPIC_APIS
        or route.api in BEDROCK_RUNTIME_APIS
        or kind is ProviderType.OPENAI
    ):
        if status in CREDENTIAL_REFUSALS:
            return _refused_plan(ctx, status)
        if json_body:
            return _foreign_errors_rewritten(ctx, status, headers)
        if route.api in BEDROCK_RUNTIME_APIS:
            return _bedrock_shaped(status, f"the provider answered with HTTP {status}")
        shape = ctx.error_shape
        return ResponsePlan(
            ErrorRewriter(lambda _: _status_error(status, shape)),
            set_headers=json_headers,
            remove_headers=rewritten,
        )
    if kind is ProviderType.ANTHROPIC:
        client_status, _ = openai_anthropic.translate_error(status, b"")
        return ResponsePlan(
            ErrorRewriter(lambda body: openai_anthropic.translate_error(status, body)[1]),
            set_headers={**json_headers, ":status": str(client_status)},
            remove_headers=rewritten,
        )
    error_type = headers.get("x-amzn-errortype")
    client_status, _ = openai_bedrock.translate_error(status, b"", error_type)
    return ResponsePlan(
        ErrorRewriter(lambda body: openai_bedrock.translate_error(status, body, error_type)[1]),
        set_headers={**json_headers, ":status": str(client_status)},
        remove_headers=rewritten,
    )

"""Request body of an AI call: parse once, validate, pick the model and provider, translate.

The body is parsed exactly once (orjson); the translator may rewrite it, and
then it is serialised once. The routing decision is a header Envoy's routes
match on, plus a cleared route cache so Envoy re-picks the provider cluster.

How the body is translated and signed for the provider is ``backends``'
business: it depends on the route's API (what the client speaks) and the
provider's type (what the upstream speaks).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from extproc import gemini_api, headers, vertex_client_api
from extproc.audio_api import audio_body, endpoint_of
from extproc.backends import (
    BEDROCK_RUNTIME_APIS,
    RequestPlan,
    check_pair,
    check_translation,
    client_asked_for_usage,
    plan_request,
    provider_api,
    sign_pending,
)
from extproc.bedrock_count_tokens import INVOKE_MODEL, check_count_body, counted_request
from extproc.bedrock_invoke_bodies import reads_as_claude
from extproc.completions_api import check_completions_body
from extproc.config.model import (
    ANTHROPIC_VERTEX_APIS,
    GEMINI_APIS,
    ROUTE_MODEL_KIND,
    LimitsConfig,
    ModelKind,
    RouteApi,
)
from extproc.context import PhaseOutput, RequestContext
from extproc.converse_api import check_converse_body, operation
from extproc.credential_cleaner import hide_in_logged_errors
from extproc.embeddings import check_embeddings_body
from extproc.errors import (
    BadRequestError,
    ModelNotFoundError,
    PermissionDeniedError,
)
from extproc.images_api import check_images_body, edit_body, is_edit
from extproc.input_limits import checked_messages, nesting_depth_over
from extproc.model_groups import Candidate, ModelGroup
from extproc.moderations_api import DEFAULT_MODEL as DEFAULT_MODERATION_MODEL
from extproc.moderations_api import check_moderations_body
from extproc.multipart_form import read_form
from extproc.openai_inputs import check_choices, check_completion_bounds
from extproc.quota.estimate import CHAT_ALLOWANCE_FIELDS
from extproc.rerank_api import check_rerank_body
from extproc.responses_api import (
    check_compact_body,
    check_input_tokens_body,
    check_responses_body,
)
from extproc.runtime import Route, Upstream
from extproc.speech_api import check_speech_body, is_speech, refuse_unserved_stream
from extproc.stages.attempt import FailoverPlan, failover_plan, fails_over, recorded
from extproc.stages.body_headers import check_body_size
from extproc.stages.model_credentials import redact_unread_path, refuse_credential_in_model

# How each endpoint that takes a Responses API body checks it (``responses_api``).
_RESPONSES_CHECKS: dict[RouteApi, Callable[[dict[str, Any], int], None]] = {
    RouteApi.OPENAI_RESPONSES: check_responses_body,
    RouteApi.OPENAI_RESPONSES_COMPACT: check_compact_body,
    RouteApi.OPENAI_RESPONSES_INPUT_TOKENS: check_input_tokens_body,
}
# The longest model name a request may give (path, header, query or body).
_MAX_MODEL_NAME = 256
# The first segments of the client APIs' own paths under a prefix (an SDK based at
# <prefix> or <prefix>/v1: /team/v1/embeddings, /team/embeddings, /team/v2/rerank,
# /team/audio/speech, and <prefix>/generations on an Images API route at /v1/images):
# never a model name on a model_from_path route, whatever its API.
_API_SEGMENTS = frozenset(
    {
        "v1",
        "v2",
        "chat",
        "completions",
        "messages",
        "responses",
        "embeddings",
        "rerank",
        "moderations",
        "audio",
        "transcriptions",
        "translations",
        "speech",
        "images",
        "generations",
        "edits",
        "variations",
    }
)
_JSON = "application/json"
# What may_repeat_a_key_read looks for: the two keys a provider must read as the
# gateway did, and the escape that could spell either another way.
_MODEL_KEY = b'"model"'
_STREAM_KEY = b'"stream"'
_MODEL_OR_STREAM = re.compile(rb'"(?:model|stream)"')
_UNICODE_ESCAPE = re.compile(rb"\\u")


class ChatRequestStage:
    def done(self, ctx: RequestContext) -> None:
        # Before the request log is written (stages.accounting): a key the path names
        # where a model goes is not recorded by a request that never got this far, nor
        # a key an error's message quotes. A request that ended well has neither.
        if ctx.error is None and ctx.stream_refusal is None and not ctx.aborted:
            return
        hide_in_logged_errors(ctx, also=redact_unread_path(ctx))

    def request_body(self, ctx: RequestContext, out: PhaseOutput, body: bytes) -> None:
        route = ctx.route
        if not ctx.accounted or route is None:
            return
        check_body_size(ctx, len(body))
        limits = ctx.runtime.config.limits
        # Bedrock Runtime and Gemini name the model and the stream in the path, not the
        # body; an operation the route does not serve is refused before its body is read.
        in_path = route.api in BEDROCK_RUNTIME_APIS or route.api in GEMINI_APIS
        if route.api in BEDROCK_RUNTIME_APIS:
            path_model, streamed = operation(ctx.path)
        elif in_path:
            path_model, streamed = gemini_operation(ctx.path)
        vertex_call = None
        if route.api in ANTHROPIC_VERTEX_APIS:
            # Vertex's path read (a 404 for one it does not serve), the request becomes
            # the Anthropic call it stands for: every stage from here on (guards, quota,
            # translation, the answer's reading, telemetry) serves it as that API's.
            vertex_call = vertex_client_api.read_path(ctx.path)
            route = ctx.route = vertex_client_api.anthropic_route(route)
        if route.api is RouteApi.OPENAI_AUDIO and is_speech(endpoint_of(ctx.path)):
            # Text-to-speech: JSON text, read and checked once.
            parsed = parse_json_object(body, limits.max_json_depth)
            check_speech_body(parsed)
        elif route.api is RouteApi.OPENAI_AUDIO:
            # An audio file's form: its text fields read, the audio left where it lies.
            ctx.form = read_form(body, ctx.request_headers.get("content-type"))
            parsed = audio_body(ctx.form, ctx.path)
        elif route.api is RouteApi.OPENAI_IMAGES and is_edit(ctx.path):
            # A form, not JSON: its text fields read, its files left where they lie.
            ctx.form = read_form(body, ctx.request_headers.get("content-type"))
            parsed = edit_body(ctx.form)
        else:
            parsed = parse_request_body(route.api, body, limits)
        if vertex_call is not None:
            vertex_client_api.as_anthropic_body(parsed, vertex_call)
            ctx.body_changed = True  # the client's bytes are no Anthropic body
        ctx.body = parsed
        if ctx.form is None and may_repeat_a_key_read(body):
            # Sent on as parsed (each key once), never as the client's bytes: the model
            # and stream checked here are then the ones the provider reads.
            ctx.body_changed = True
        named = path_model if in_path else model_outside_body(ctx) or parsed.get("model")
        if named is None and route.api is RouteApi.OPENAI_MODERATIONS:
            # OpenAI's model is optional here: its default, served where one is configured.
            named = DEFAULT_MODERATION_MODEL
        model = route.forced_model or named
        if not isinstance(model, str) or not model:
            raise BadRequestError("'model' is required and must be a string", param="model")
        if len(model) > _MAX_MODEL_NAME:
            # No provider's model id comes near (a Bedrock ARN is about 100 characters);
            # a catch-all route would otherwise carry a megabyte name into the log line,
            # the metrics' label budget and every hourly rollup key.
            raise BadRequestError(
                f"'model' is longer than {_MAX_MODEL_NAME} characters", param="model"
            )
        # Before the name is recorded anywhere (log, metadata, metrics, a 404's message).
        refuse_credential_in_model(ctx, model)
        ctx.model = asked = model
        stream = streamed if in_path else parsed.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise BadRequestError("'stream' must be a boolean", param="stream")
        # Before a group's member is drawn: its translation check reads it.
        ctx.stream = bool(stream)
        group = ctx.runtime.groups.get(model)
        if group is not None:
            # A model group's name: one member serves it, and the request is that
            # member's from here on (its chain, price, credentials and quotas).
            member = choose_member(ctx, group, route, parsed)
            ctx.model_group = model  # once one serves: a refused request names no member
            model = ctx.model = member
        upstream = ctx.runtime.resolve_upstream(model, route)
        if upstream is None:
            raise _not_served(model, route)
        canonical = ctx.runtime.canonical_model.get(model)
        denial = ctx.runtime.access.denial(
            ctx.identity, model, route.name, canonical or ctx.model_group
        )
        if denial is not None:
            raise PermissionDeniedError(denial, code="model_not_allowed", param="model")
        check_model_kind(ctx, model, route)
        if route.api is RouteApi.OPENAI_AUDIO and is_speech(endpoint_of(ctx.path)):
            # Before the quota, as OpenAI would refuse it.
            refuse_unserved_stream(asked, model, upstream.upstream_model, parsed)
        ctx.provider = upstream.provider.name
        ctx.provider_type = upstream.provider.type
        ctx.provider_api = provider_api(upstream)
        ctx.upstream_model = upstream.upstream_model
        check_pair(ctx, parsed, upstream)
        if route.api is RouteApi.BEDROCK_INVOKE and reads_as_claude(
            upstream.upstream_model, parsed
        ):
            check_chat_messages(parsed, limits.max_messages)  # Claude's body: a Messages call
        if route.api is RouteApi.BEDROCK_COUNT_TOKENS:
            member, counted = counted_request(parsed)
            if member == INVOKE_MODEL and reads_as_claude(upstream.upstream_model, counted):
                # Counted as InvokeModel's body, checked as it is: the guards read no other.
                check_chat_messages(counted, limits.max_messages)
        confirm = ctx.lean_from_hints
        if confirm is not None and (
            (confirm.model is not None and confirm.model != asked)
            or (confirm.stream is not None and confirm.stream != ctx.stream)
        ):
            # Envoy read another model or stream flag in this body than the gateway
            # (a repeated key, each parser keeping another one), and chose how to read
            # the answer by its reading: refuse rather than guess which one the
            # provider would honour.
            raise BadRequestError(
                "the request body is ambiguous: 'model' or 'stream' reads two ways "
                "(is a key repeated?)",
                code="ambiguous_body",
            )
        ctx.upstream = upstream
        # Asked by an alias, the model fails over along its own chain (chat completions,
        # Anthropic's Messages API, a Vertex client's call read as one included, Gemini's
        # generateContent, Bedrock's Converse and InvokeModel; never a token count).
        primary = canonical or model
        if fails_over(route.api) and primary in ctx.runtime.failover:
            ctx.failover_model = primary


def _not_served(model: str, route: Route) -> ModelNotFoundError:
    where = f"on route '{route.name}'" if route.provider else "by this gateway"
    return ModelNotFoundError(
        f"The model '{model}' does not exist or is not served {where}", param="model"
    )


def choose_member(
    ctx: RequestContext, group: ModelGroup, route: Route, parsed: dict[str, Any]
) -> str:
    """The member of ``group`` that serves this request: drawn at random by weight among
    the members the route can send it to (its provider), the caller may use (a key's
    ``allowed_models``, the access rules of the route) and whose provider can serve the
    route's API and this body (``backends.check_translation``), passing over those whose
    provider failed lately (``model_groups.Balancer``).

    With none left the request is refused as a request for a single model would be that
    nothing serves on the route (404), that the caller may not use (403
    ``model_not_allowed``) or whose provider cannot answer this API or body (400), the
    refusal naming the group."""
    runtime = ctx.runtime
    served = [
        (name, weight, upstream)
        for name, weight in group.members
        if (upstream := runtime.resolve_upstream(name, route)) is not None
    ]
    if not served:
        raise _not_served(group.name, route)
    allowed = [
        member
        for member in served
        if runtime.access.denial(ctx.identity, member[0], route.name, group.name) is None
    ]
    if not allowed:
        denial = runtime.access.denial(
            ctx.identity, served[0][0], route.name, group.name, shown=group.name
        )
        raise PermissionDeniedError(
            denial or f"model '{group.name}' may not be used",
            code="model_not_allowed",
            param="model",
        )
    check_model_kind(ctx, group.name, route)
    able: list[Candidate] = []
    refusal: BadRequestError | None = None
    for name, weight, upstream in allowed:
        try:
            # The whole translation's refusals, not only the early ones (check_pair): a
            # body one member's translation refuses ('n' for Claude, an image URL for
            # Claude on Vertex) would otherwise get a 400 on some draws and not others.
            # ctx.model is still the group's name: a refusal names the group.
            check_translation(ctx, parsed, upstream)
            if route.api is RouteApi.OPENAI_AUDIO and is_speech(endpoint_of(ctx.path)):
                refuse_unserved_stream(group.name, name, upstream.upstream_model, parsed)
        except BadRequestError as refused:
            refusal = refusal or refused
            continue
        able.append(Candidate(name, weight, upstream.provider.name))
    if not able:
        assert refusal is not None
        raise refusal
    draw = runtime.services.balancer.choose(able, group.cooldown_s)
    for cooling in draw.passed_over:
        # How often a provider's failure moved its group's traffic elsewhere.
        runtime.services.metrics.group_member_passed_over(group.name, cooling.provider)
    return draw.chosen.model


class UpstreamRequestStage:
    """After the quota check: translate and sign the body for the chosen provider and
    point Envoy at its cluster."""

    def request_body(
        self, ctx: RequestContext, out: PhaseOutput, body: bytes
    ) -> Awaitable[None] | None:
        upstream = ctx.upstream
        if upstream is None or ctx.body is None:
            return None
        if ctx.form is None:
            # The body was read as JSON whatever content type the client named (`curl
            # -d` says application/x-www-form-urlencoded), and what goes upstream is
            # JSON: labelled so, as Anthropic's API requires, not with the client's word.
            # (An image edit's form keeps its own type: its boundary is in it.)
            out.set_headers["content-type"] = _JSON
        if ctx.failover_model is not None:
            # Each attempt is translated and signed by the per-attempt filter, for
            # whichever provider Envoy tries, from the client's body and the chain.
            ctx.client_wants_usage = client_asked_for_usage(ctx, ctx.body)
            failover = recorded(ctx, failover_plan(ctx))
            out.body = body_with_chain(ctx.body, failover)
            out.set_headers["content-length"] = str(len(out.body))
            out.set_headers[headers.CLUSTER] = failover.cluster
            out.clear_route_cache = True
            return None
        plan = plan_request(ctx, ctx.body, upstream, body)
        if plan.signature is not None:
            # A large body to AWS: hashed in a thread, then sent (Envoy waits for it).
            return _send_signed(ctx, out, upstream, plan)
        _send(ctx, out, upstream, plan)
        return None


async def _send_signed(
    ctx: RequestContext, out: PhaseOutput, upstream: Upstream, plan: RequestPlan
) -> None:
    await sign_pending(plan)
    _send(ctx, out, upstream, plan)


def _send(ctx: RequestContext, out: PhaseOutput, upstream: Upstream, plan: RequestPlan) -> None:
    """Point Envoy at ``upstream`` with the planned body, path and headers."""
    if plan.body is not None:
        out.body = plan.body
        out.set_headers["content-length"] = str(len(plan.body))
    if plan.path != ctx.path:
        # The same path needs no rewrite (and Envoy no header mutation).
        out.set_headers[":path"] = plan.path
    out.set_headers[headers.CLUSTER] = upstream.cluster
    out.set_headers.update(plan.headers)
    out.remove_headers.extend(plan.remove_headers)
    out.clear_route_cache = True


# Where a model of each kind is served, for the refusal of one sent elsewhere.
_KIND_ENDPOINT = {
    ModelKind.CHAT: "/v1/chat/completions",
    ModelKind.EMBEDDINGS: "/v1/embeddings",
    ModelKind.IMAGES: "/v1/images/generations",
    ModelKind.TRANSCRIPTION: "/v1/audio/transcriptions",
    ModelKind.SPEECH: "/v1/audio/speech",
    ModelKind.MODERATION: "/v1/moderations",
    ModelKind.RERANK: "/v1/rerank",
}
# The kinds named with "an" in a refusal; "a" for the others.
_VOWEL_KINDS = frozenset({ModelKind.EMBEDDINGS, ModelKind.IMAGES})


def check_model_kind(ctx: RequestContext, model: str, route: Route) -> None:
    """Refuse a model of another kind than the route's API asks for (an embeddings model
    on a chat route, a chat model on the embeddings or an Images API route), before the
    quota counts the request and the provider refuses it."""
    kind = ctx.runtime.model_kind.get(model)
    wanted = ROUTE_MODEL_KIND.get(route.api)
    if route.api is RouteApi.OPENAI_AUDIO and is_speech(endpoint_of(ctx.path)):
        wanted = ModelKind.SPEECH  # the audio routes serve both, by the path
    if kind is None and wanted is ModelKind.MODERATION:
        # Moderation is never metered (no token limit refuses it): only a model the
        # config declares a moderation model is served there, never one that may generate.
        raise BadRequestError(
            f"'{model}' is not a moderation model: this route ({route.api}) serves the "
            "models the gateway's config declares of kind 'moderation' alone",
            param="model",
            code="unsupported_model_for_route",
        )
    if kind is None or wanted is None or kind is wanted:
        return
    where = _KIND_ENDPOINT[kind]
    raise BadRequestError(
        f"'{model}' is {'an' if kind in _VOWEL_KINDS else 'a'} {kind} model, "
        f"which this route ({route.api}) does not serve; send it to {where}",
        param="model",
        code="unsupported_model_for_route",
    )


def body_with_chain(parsed: dict[str, Any], plan: FailoverPlan) -> bytes:
    """The body every attempt starts from: the client's, with the failover chain as this
    request resolved it, so an attempt made after a reload (on any worker) serves the
    request under the config it was admitted with, and the client's API.

    The gateway's values replace any the client sent under those keys: the client cannot
    name the models its attempts serve, nor the API they read its body in. ``parsed``
    itself is left as it is (later stages read the client's request)."""
    return orjson.dumps(
        {
            **parsed,
            headers.FAILOVER_CHAIN_KEY: plan.chain,
            headers.FAILOVER_REQUEST_KEY: plan.request,
        }
    )


def may_repeat_a_key_read(body: bytes) -> bool:
    """Whether ``body`` may name ``model`` or ``stream`` twice (or spell one with
    ``\\u`` escapes, which is how a second one could hide from a byte count).

    orjson keeps a repeated key's last value, and the gateway checks that model against
    the key's ``allowed_models`` and the access rules; a provider whose parser keeps the
    first would serve the other one, past both, and bill a stream the gateway took for
    a JSON answer. A body that may read two ways is sent as the gateway parsed it.

    ``body`` parsed as JSON, so its ``"model"`` and ``"stream"`` are whole string tokens,
    which never overlap: one pass finds both as ``bytes.count`` counts each. The byte
    searches cost about five times the body's parse (bytes.count and ``in`` step byte
    by byte over JSON's common letters); ``re`` finds these needles two to three times
    as fast."""
    keys = _MODEL_OR_STREAM.findall(body)
    return (
        keys.count(_MODEL_KEY) > 1
        or keys.count(_STREAM_KEY) > 1
        or _UNICODE_ESCAPE.search(body) is not None
    )


def gemini_operation(path: str) -> tuple[str, bool]:
    """The model a Gemini API path names (its last segment, ``{model}:{operation}``, under
    any prefix) and whether the operation streams."""
    path, _, query = path.partition("?")
    last = path.rstrip("/").rpartition("/")[2]
    model, operation = gemini_api.model_and_operation("/" + last)
    streamed = gemini_api.streams(operation)
    if streamed:
        gemini_api.check_stream_query(query)
    return model, streamed


def model_outside_body(ctx: RequestContext) -> str | None:
    """The model named by the path, a header or the query, in that order of strength."""
    route = ctx.route
    assert route is not None
    path, _, query = ctx.path.partition("?")
    # Under a Gateway API controller an HTTPRoute may put the route on another path:
    # then the path names no model.
    prefix = route.prefix
    if route.model_from_path and prefix is not None and path.startswith(prefix + "/"):
        segment = path[len(prefix) :].strip("/").split("/", 1)[0]
        # `/openai/v1/chat/completions` (an SDK with base_url=/openai/v1) names no model,
        # nor `/team/embeddings` (one based at /team).
        if segment and segment not in _API_SEGMENTS:
            return unquote(segment)
    if route.model_header is not None:
        named = _header_model(ctx.request_headers.get(route.model_header, ""), route.model_header)
        if named:
            return named
    if route.model_query is not None and query:
        values = parse_qs(query).get(route.model_query, ())
        return _one_model(values, f"the query names more than one model in '{route.model_query}'")
    return None


def _header_model(value: str, name: str) -> str | None:
    """The model the route's header names; an empty value names none.

    A header sent twice is read as one comma-separated list, as HTTP reads it
    (``envoy_messages.header_map``): a proxy that sets the header the client also set
    sends ``gpt-4o,gpt-4o``, which is that model, not a 404 for a model of that name;
    two different ones are refused as the query's are. No model name holds a comma."""
    if "," not in value:
        return value or None
    values = [part for part in (each.strip() for each in value.split(",")) if part]
    return _one_model(values, f"the '{name}' header names more than one model")


def _one_model(values: Iterable[str], ambiguous: str) -> str | None:
    """The one model ``values`` name, None for none; two different ones are refused:
    web frameworks and proxies disagree on which one counts (first, last, a list), so a
    client cannot know which model it would be billed for, as with a body that repeats
    its ``model`` key. The same name twice is that model."""
    named = set(values)
    if len(named) > 1:
        raise BadRequestError(f"{ambiguous}; name one", code="ambiguous_model", param="model")
    return named.pop() if named else None


def parse_request_body(api: RouteApi, body: bytes, limits: LimitsConfig) -> dict[str, Any]:
    """Parse and validate the body of a request in the route's API."""
    if api is RouteApi.OPENAI_EMBEDDINGS:
        parsed = parse_json_object(body, limits.max_json_depth)
        check_embeddings_body(parsed)
        return parsed
    if api is RouteApi.RERANK:
        parsed = parse_json_object(body, limits.max_json_depth)
        check_rerank_body(parsed)
        return parsed
    if api in _RESPONSES_CHECKS:
        parsed = parse_json_object(body, limits.max_json_depth)
        _RESPONSES_CHECKS[api](parsed, limits.max_messages)
        return parsed
    if api is RouteApi.OPENAI_COMPLETIONS:
        parsed = parse_json_object(body, limits.max_json_depth)
        check_completions_body(parsed, limits.max_messages)
        return parsed
    if api is RouteApi.OPENAI_IMAGES:
        parsed = parse_json_object(body, limits.max_json_depth)
        check_images_body(parsed)
        return parsed
    if api is RouteApi.OPENAI_MODERATIONS:
        parsed = parse_json_object(body, limits.max_json_depth)
        check_moderations_body(parsed)
        return parsed
    if api is RouteApi.BEDROCK_CONVERSE:
        parsed = parse_json_object(body, limits.max_json_depth)
        check_converse_body(parsed, limits.max_messages)
        return parsed
    if api is RouteApi.BEDROCK_COUNT_TOKENS:
        parsed = parse_json_object(body, limits.max_json_depth)
        check_count_body(parsed, limits.max_messages, limits.max_json_depth)
        return parsed
    if api is RouteApi.BEDROCK_INVOKE:
        # Checked as a Messages body once the model is known to be Claude: another
        # family's body has another shape, Bedrock's to check.
        return parse_json_object(body, limits.max_json_depth)
    if api in GEMINI_APIS:
        parsed = parse_json_object(body, limits.max_json_depth)
        counted = api is RouteApi.GEMINI_COUNT_TOKENS
        operation = gemini_api.COUNT_TOKENS if counted else gemini_api.GENERATE_CONTENT
        gemini_api.check_body(parsed, operation, limits.max_messages)
        return parsed
    parsed = parse_chat_body(body, limits.max_messages, limits.max_json_depth)
    if api is RouteApi.OPENAI_CHAT:
        # The quota reserves the allowance once per choice (``stages.quota``).
        check_choices(parsed, "n")
        check_completion_bounds(parsed, CHAT_ALLOWANCE_FIELDS)
    return parsed


def parse_chat_body(body: bytes, max_messages: int, max_depth: int = 64) -> dict[str, Any]:
    """Parse and validate a chat request body (OpenAI chat completions or Anthropic messages)."""
    parsed = parse_json_object(body, max_depth)
    check_chat_messages(parsed, max_messages)
    return parsed


def check_chat_messages(parsed: dict[str, Any], max_messages: int) -> None:
    """Refuse a chat body whose ``messages`` is not a list of objects with a role."""
    messages = checked_messages(parsed.get("messages"), max_messages)
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequestError(
                f"messages[{index}] must be an object with a string 'role'",
                param=f"messages[{index}]",
            )


def _why_not_json(body: bytes, error: orjson.JSONDecodeError) -> str:
    """The parser's complaint, or where the body stops being UTF-8: orjson says "str is
    not valid UTF-8: surrogates not allowed" at char 0 for any such byte (a client that
    sent Latin-1 text, `charset=latin-1`), naming neither the cause nor the place."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"it is not UTF-8 text (byte {exc.start} cannot be decoded); JSON is sent as UTF-8"
    return str(error)


def parse_json_object(body: bytes, max_depth: int) -> dict[str, Any]:
    """Parse a request body that must be one JSON object, nested no deeper than allowed."""
    if not body:
        raise BadRequestError("request body is empty; expected a JSON object")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(
            f"request body is not valid JSON: {_why_not_json(body, exc)}"
        ) from None
    if not isinstance(parsed, dict):
        raise BadRequestError("request body must be a JSON object")
    # Each level opens with a "{" or "[", so a body with no more of them than the
    # limit cannot nest past it: counting bytes spares the walk for most bodies.
    if openers_over(body, max_depth) and nesting_depth_over(parsed, max_depth):
        raise BadRequestError(f"request body nests deeper than {max_depth} levels")
    return parsed


# From this many bytes per opener the limit allows, finding the openers one by one
# (stopping past the limit) costs no more than counting them all: see openers_over.
_BYTES_PER_FOUND_OPENER = 200


def openers_over(body: bytes, limit: int) -> bool:
    """Whether ``body`` holds more than ``limit`` of ``{`` and ``[`` together.

    ``bytes.count`` steps through every byte (about 0.3 ns each, per character
    counted); ``bytes.find`` jumps to the next one (memchr), at about 0.12 us a call.
    A large body (an agent's: a long history, tool schemas) is looked through with
    ``find``, which stops once past the limit: a 100 KB prompt took 60 to 80 us to
    count and takes about 8 us at most. A small body full of brackets is counted: there
    ``find`` would cost more than the count."""
    if len(body) < _BYTES_PER_FOUND_OPENER * (limit + 1):
        return body.count(b"{") + body.count(b"[") > limit
    found = 0
    for opener in (b"{", b"["):
        at = body.find(opener)
        while at >= 0:
            found += 1
            if found > limit:
                return True
            at = body.find(opener, at + 1)
    return False

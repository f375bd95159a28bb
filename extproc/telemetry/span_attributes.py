"""What the gateway tells Envoy about a request, for Envoy's access log and its spans.

The gateway answers Envoy's last message of a request with dynamic metadata in
the ``io.aigw`` namespace (``request_metadata``); Envoy's access log prints it
and Envoy's tracer copies it onto the request's span as attributes, one custom
tag per entry of ``SPAN_ATTRIBUTES`` (rendered by ``extproc.envoy_tracing``).
One table, so the keys the gateway writes and the keys Envoy reads never drift.

Envoy merges each answer's metadata into what it holds, key by key, and reads it
when the span closes. A stream's answers therefore also carry its running usage
(``running_usage_metadata``, decided by ``extproc.stages.telemetry``): when the client
hangs up, Envoy closes the span at once and reads no later answer, so what the
span has is what was sent while the stream ran.

Attribute names follow the OpenTelemetry GenAI semantic conventions where one
exists (``gen_ai.*``); the gateway's own dimensions are under ``aigw.*``.

After a failover, the counts and the cost include the attempts cut after their provider
started answering (``ctx.cut_attempts``), as the log line's totals do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from extproc.bedrock_invoke_bodies import invokes_embeddings
from extproc.chargeback.pricing import answered_tier, usage_cost, usd_float
from extproc.config.model import RouteApi
from extproc.context import Usage, with_cut_attempts
from extproc.envoy_paths import PATH_METADATA_KEY
from extproc.http_methods import METHOD_METADATA_KEY, REGISTERED_METHODS
from extproc.translators.answer_errors import ProviderAnswerError
from extproc.translators.base import stream_failure

if TYPE_CHECKING:
    from extproc.context import RequestContext

# (span attribute, metadata key): always tagged when the request has the value.
SPAN_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("gen_ai.operation.name", "operation"),
    ("gen_ai.provider.name", "provider_type"),
    ("gen_ai.request.model", "model"),
    # A model group's member that served (gen_ai.request.model is then the group's name;
    # gen_ai.response.model is what the provider said answered, not the gateway's name).
    ("aigw.group_member", "group_member"),
    ("gen_ai.response.model", "response_model"),
    ("gen_ai.usage.input_tokens", "prompt_tokens"),
    ("gen_ai.usage.output_tokens", "completion_tokens"),
    ("gen_ai.response.finish_reasons", "finish_reasons"),
    # The prompt's cache reads and writes, both part of gen_ai.usage.input_tokens as the
    # conventions ask (Anthropic's own input_tokens leaves them out; the gateway's counts
    # do not): the names GenAI-aware backends read to show a prompt cache's effect.
    ("gen_ai.usage.cache_read.input_tokens", "cached_tokens"),
    ("gen_ai.usage.cache_creation.input_tokens", "cache_write_tokens"),
    # The cache reads again, under the name spans carried before the conventions had one:
    # saved searches and dashboards keep working.
    ("aigw.usage.cached_input_tokens", "cached_tokens"),
    ("aigw.usage.total_tokens", "total_tokens"),
    # The audio parts of the counts, billed at the audio prices; only when there are any.
    ("aigw.usage.audio_input_tokens", "prompt_audio_tokens"),
    ("aigw.usage.cached_audio_input_tokens", "cached_audio_tokens"),
    ("aigw.usage.audio_output_tokens", "completion_audio_tokens"),
    # The image parts of the prompt (an image edit's pictures, OpenAI's GPT Image models)
    # and of the completion (the pictures drawn: OpenAI's Images API, Gemini's image
    # models), each billed at its own image price.
    ("aigw.usage.image_input_tokens", "prompt_image_tokens"),
    ("aigw.usage.image_output_tokens", "completion_image_tokens"),
    # The searches a rerank was billed by (Cohere's search units), priced apart.
    ("aigw.usage.search_units", "search_units"),
    ("aigw.route", "route"),
    ("aigw.provider", "provider"),
    ("aigw.api_key_id", "api_key_id"),
    ("aigw.user_id", "user_id"),
    ("aigw.group_id", "group_id"),
    ("aigw.auth_method", "auth_method"),
    ("aigw.quota_decision", "quota_decision"),
    ("aigw.error_type", "error_type"),
    # The tier that priced the request, in the provider's words (the log line's). For an
    # OpenAI provider the conventions' openai.response.service_tier; one name for all.
    ("aigw.service_tier", "service_tier"),
    # A request that failed on the provider's or the gateway's side (``_server_failure``).
    ("error.type", "failure_type"),
    ("error", "error"),
    # Envoy's OpenTelemetry tracer sets a span's status from two tags only: a 5xx
    # http.status_code, and a failing grpc.status_code. The first must stay what the
    # client got (a 200 when a stream broke after it), so the second carries the
    # failure: UNKNOWN (2), an error status on server and client spans alike.
    ("grpc.status_code", "failure_status"),
)
# Tagged only with ``telemetry.tracing.capture_content``: the text after guardrail masking.
CONTENT_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("gen_ai.input.messages", "input_messages"),
    ("gen_ai.output.messages", "output_messages"),
)

# The counts of a request without usage of its own (every failover attempt cut).
_NO_USAGE = Usage()
# gRPC's UNKNOWN: the status Envoy's tracer maps to an error on every kind of span.
_GRPC_UNKNOWN = "2"
# error.type of a stream the provider broke off, when it named no error type.
_STREAM_ERROR = "stream_error"
# gen_ai.operation.name by route API. A token count generates nothing, so a search for
# chats (and the tokens they used) must not find it; the conventions have no value for
# it, and a custom one is allowed. OpenAI's Responses API is a chat: the conventions for
# OpenAI name it so (their openai.api.type tells "responses" from "chat_completions").
OPERATIONS = {
    RouteApi.OPENAI_CHAT: "chat",
    RouteApi.OPENAI_RESPONSES: "chat",
    RouteApi.ANTHROPIC_MESSAGES: "chat",
    RouteApi.BEDROCK_CONVERSE: "chat",
    RouteApi.BEDROCK_INVOKE: "chat",
    RouteApi.BEDROCK_COUNT_TOKENS: "count_tokens",
    RouteApi.ANTHROPIC_COUNT_TOKENS: "count_tokens",
    RouteApi.OPENAI_EMBEDDINGS: "embeddings",
    # A rerank generates nothing and is no embedding; the conventions have no value for it.
    RouteApi.RERANK: "rerank",
    # The conventions' own value for OpenAI's legacy completions API.
    RouteApi.OPENAI_COMPLETIONS: "text_completion",
    # The Responses API's compaction generates (and is billed), yet is no chat: a search
    # for chats must not find it; the conventions have no value for it.
    RouteApi.OPENAI_RESPONSES_COMPACT: "compact",
    RouteApi.OPENAI_RESPONSES_INPUT_TOKENS: "count_tokens",
    # The conventions' own value for Gemini's generateContent.
    RouteApi.GEMINI_GENERATE_CONTENT: "generate_content",
    # ...and for OpenAI's Images API: the conventions' value for multimodal generation.
    RouteApi.OPENAI_IMAGES: "generate_content",
    # ...and for speech to text and text to speech, likewise (the conventions have no
    # value of their own).
    RouteApi.OPENAI_AUDIO: "generate_content",
    RouteApi.GEMINI_COUNT_TOKENS: "count_tokens",
    # A moderation classifies and generates nothing: the conventions have no value for
    # it, and a custom one is allowed.
    RouteApi.OPENAI_MODERATIONS: "moderation",
    # A Vertex client's call before its body is read (a bad key); after, it is the
    # Anthropic call it stands for (extproc.vertex_client_api).
    RouteApi.ANTHROPIC_VERTEX: "chat",
    RouteApi.ANTHROPIC_VERTEX_COUNT_TOKENS: "count_tokens",
}
# gen_ai.provider.name's well-known values, by the gateway's provider type (the span's
# attribute, and the label of gen_ai_client_token_usage).
GEN_AI_PROVIDER_NAMES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "bedrock": "aws.bedrock",
    "vertex": "gcp.vertex_ai",
}


def operation_of(ctx: RequestContext) -> str | None:
    """gen_ai.operation.name of the request (``OPERATIONS``); an InvokeModel call to an
    embeddings model is ``embeddings``, as on /v1/embeddings."""
    if ctx.route is None:
        return None
    if invokes_embeddings(ctx):
        return "embeddings"
    return OPERATIONS.get(ctx.route.api)


def request_metadata(ctx: RequestContext, usage: Usage | None = None) -> dict[str, str | float]:
    """The ``io.aigw`` metadata of one request; unknown values are left out, not empty.

    ``usage``: the counts the span carries while a stream runs or is being charged
    (``extproc.stages.telemetry.span_usage``); otherwise the request's settled usage.
    """
    identity = ctx.identity
    error = ctx.error or ctx.stream_refusal
    if usage is None and (ctx.usage_reported or ctx.usage_estimated):
        usage = ctx.usage
    cost = ctx.cost
    if cost is None and usage is not None and ctx.completed:
        # A stream that ended without the provider's count, or with its error event, is
        # charged its estimate at done, after Envoy's last answer: the answers that carry
        # that estimate carry its cost (the counts, model and tier done prices).
        cost = usage_cost(ctx, usage, _service_tier(ctx))
    # Only known values go in (a name left out, not empty): the request's names are text,
    # kept when neither None nor "", the counts and the cost numbers, always kept. Put in
    # one by one, not filtered out of a dict of them all (about 1 us, twice a request).
    values: dict[str, str | float] = {}
    for key, text in (
        ("route", ctx.route.name if ctx.route else None),
        ("operation", operation_of(ctx) if ctx.accounted else None),
        ("provider", ctx.provider),
        (
            "provider_type",
            GEN_AI_PROVIDER_NAMES.get(ctx.provider_type.value) if ctx.provider_type else None,
        ),
        ("model", ctx.asked_model),
        ("group_member", ctx.group_member),
        ("response_model", ctx.response_model),
        ("api_key_id", identity.api_key_id),
        ("user_id", identity.user_id),
        ("group_id", identity.group_id),
        ("auth_method", identity.method),
        ("quota_decision", ctx.quota_decision),
        ("error_type", error.error_type if error else None),
        # Envoy's access log and span print the method and path the first answer
        # named (envoy_request_record); said again when a later answer ends the
        # request, and the path whenever a segment of it was found to hold a credential
        # after the first answer (the model's, the request's own key).
        (METHOD_METADATA_KEY, None if ctx.method in REGISTERED_METHODS else ctx.method),
        (PATH_METADATA_KEY, ctx.recorded_path),
    ):
        if text:
            values[key] = text
    cut = ctx.cut_attempts
    if cut:
        usage = with_cut_attempts(usage or _NO_USAGE, cut)
    if usage is not None:
        values.update(usage_metadata(usage))
    failure = _server_failure(ctx)
    if failure:
        values["failure_type"] = failure
        values["error"] = "true"
        values["failure_status"] = _GRPC_UNKNOWN
    if cost is not None or cut:
        # For Envoy's access log; exact like the log line's (docs/chargeback.md).
        picousd = cost.picousd if cost is not None else 0
        if cut:
            picousd += sum(each.cost.picousd for each in cut)
        values["cost_usd"] = usd_float(picousd)
    service_tier = _service_tier(ctx)
    if service_tier:
        values["service_tier"] = service_tier
    if ctx.finish_reasons:
        # Envoy's tags are strings: the array as JSON, as OpenTelemetry exporters
        # render array attributes they cannot type.
        values["finish_reasons"] = orjson.dumps(list(ctx.finish_reasons)).decode()
    tracing = ctx.runtime.config.telemetry.tracing
    if tracing.enabled and tracing.capture_content and ctx.content is not None:
        prompt = ctx.content.input_messages_json(ctx.body)
        if prompt:
            values["input_messages"] = prompt
        # The first choice's reason, as the client saw it; "error" (the conventions' value
        # for a generation that did not finish) when it saw none: cut short, failed.
        reason = ctx.finish_reasons[0] if ctx.finish_reasons else "error"
        completion = ctx.content.output_messages_json(reason)
        if completion:
            values["output_messages"] = completion
    return values


def _service_tier(ctx: RequestContext) -> str | None:
    """The tier that priced the request; before it is priced (a running stream, its usage
    report ahead of its end), the tier a cut there would be priced at: the one its answer
    named so far. So the answers that carry a stream's usage carry its tier too, and a
    span Envoy closes early has both."""
    if ctx.cost is not None:
        return ctx.service_tier
    return answered_tier(ctx)


def usage_metadata(usage: Usage) -> dict[str, str | float]:
    """The token counts of a request (or of a stream so far)."""
    counts: dict[str, str | float] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": usage.cached_tokens,
        # Always sent, as the cache reads are: Envoy keeps a key no later answer names,
        # so a count left out at 0 could leave an earlier answer's standing.
        "cache_write_tokens": usage.cache_write_tokens,
    }
    # Left out at 0, as most requests are: every answer to Envoy carries these bytes.
    # Audio and image counts only grow over a stream, so an earlier answer's value is
    # never stale.
    for name, count in (
        ("prompt_audio_tokens", usage.audio_tokens),
        ("cached_audio_tokens", usage.cached_audio_tokens),
        ("completion_audio_tokens", usage.audio_output_tokens),
        ("prompt_image_tokens", usage.image_tokens),
        ("completion_image_tokens", usage.image_output_tokens),
        ("search_units", usage.search_units or 0),
    ):
        if count:
            counts[name] = count
    return counts


def running_usage_metadata(usage: Usage) -> dict[str, str | float]:
    """What each answer of a running stream carries: the counts that move. The prompt
    side is fixed while it runs, and went with the stream's first answer; an answer
    that changes it (the provider's report or error) carries the whole metadata."""
    return {"completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens}


def _server_failure(ctx: RequestContext) -> str | None:
    """``error.type`` of a request that failed on the provider's or the gateway's side.

    OpenTelemetry's HTTP server conventions: a 5xx is the server's failure, a 4xx the
    client's (a bad key, a quota used up: ``aigw.error_type`` says which), which leaves
    the status unset. A provider's error inside a stream comes after its 200 has left,
    so no status tells Envoy; only the gateway knows the client got a broken answer.
    """
    if ctx.stream and stream_failure(ctx.translator) is not None:
        return ctx.error.error_type if ctx.error is not None else _STREAM_ERROR
    if isinstance(ctx.error, ProviderAnswerError):
        return ctx.error.error_type  # a 200 whose body was the provider's error
    if ctx.response_status >= 500:
        return ctx.error.error_type if ctx.error is not None else str(ctx.response_status)
    return None

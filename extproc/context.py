"""The per-request state every stage reads and writes (the "flow").

One ``RequestContext`` lives for one HTTP request, i.e. one ext_proc gRPC stream.
Stages fill it in phase order; ``PhaseOutput`` collects what one phase answers
Envoy, and the processor turns it into protobuf.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from extproc import anthropic_models
from extproc.answer_status import no_answer
from extproc.audio_api import audio_prompt_tokens
from extproc.audio_api import estimate_prompt_tokens as estimate_audio_prompt
from extproc.bedrock_invoke_bodies import estimate_prompt_tokens as estimate_invoke_body
from extproc.bedrock_invoke_bodies import reads_as_claude
from extproc.completions_api import estimate_prompt as estimate_completions_prompt
from extproc.config.model import RouteApi
from extproc.converse_api import estimate_prompt_tokens as estimate_converse_tokens
from extproc.embeddings import estimate_input_tokens
from extproc.gemini_api import estimate_prompt_tokens as estimate_gemini_tokens
from extproc.images_api import estimate_prompt_tokens as estimate_images_prompt
from extproc.images_api import input_image_tokens
from extproc.multipart_form import MultipartForm
from extproc.quota.estimate import estimate_prompt_tokens, estimate_responses_tokens
from extproc.rerank_api import estimate_rerank_tokens

if TYPE_CHECKING:
    from extproc.agents.call import AgentCall
    from extproc.chargeback.pricing import Cost
    from extproc.config.model import ProviderType
    from extproc.errors import GatewayError
    from extproc.quota.store import Reservation
    from extproc.runtime import Route, Runtime, Upstream
    from extproc.stages.stored_responses import StoredResponseCall
    from extproc.telemetry.content import ContentCapture
    from extproc.translators.base import ResponseTranslator


def _api_shape(api: RouteApi) -> str:
    """The error shape of a route's API (``RequestContext.error_shape``)."""
    if api in {RouteApi.MCP, RouteApi.A2A}:
        return "jsonrpc"
    if api.startswith("anthropic_"):
        return "anthropic"
    if api.startswith("bedrock_"):
        return "bedrock"
    if api.startswith("gemini_"):
        return "google"
    return "openai"


# Read several times per request (the first answer's metadata, the credentials, every
# error): looked up, not worked out from the API's name each time.
_API_SHAPES = {api: _api_shape(api) for api in RouteApi}


# How the prompt of each client API that does not send chat messages is estimated;
# the others (chat completions, Anthropic's Messages) by ``estimate_prompt_tokens``.
_PROMPT_ESTIMATES: dict[RouteApi, Callable[[dict[str, Any]], int]] = {
    RouteApi.OPENAI_EMBEDDINGS: estimate_input_tokens,
    RouteApi.RERANK: estimate_rerank_tokens,
    RouteApi.OPENAI_RESPONSES: estimate_responses_tokens,
    RouteApi.OPENAI_COMPLETIONS: estimate_completions_prompt,
    RouteApi.OPENAI_IMAGES: estimate_images_prompt,
    RouteApi.OPENAI_AUDIO: estimate_audio_prompt,
    RouteApi.OPENAI_RESPONSES_COMPACT: estimate_responses_tokens,
    RouteApi.OPENAI_RESPONSES_INPUT_TOKENS: estimate_responses_tokens,
    RouteApi.BEDROCK_CONVERSE: estimate_converse_tokens,
    RouteApi.GEMINI_GENERATE_CONTENT: estimate_gemini_tokens,
    RouteApi.GEMINI_COUNT_TOKENS: estimate_gemini_tokens,
}


@dataclass(frozen=True, slots=True)
class ImageGeneration:
    """The tokens of the pictures OpenAI's image model drew for a Responses API request
    (its ``image_generation`` tool), which the response reports apart from ``usage``
    (``tool_usage.image_gen``) and bills at the image model's prices, not the answering
    model's. ``model``: the image model (the response's ``tools`` entry, else the
    request's); None when neither names it (priced as a model without a price)."""

    model: str | None
    input_tokens: int = 0
    # Of input_tokens, the images the image model read (the conversation's pictures).
    input_image_tokens: int = 0
    output_tokens: int = 0
    # Of output_tokens, the pictures (all of them when the report names no text part).
    output_image_tokens: int = 0
    # Of input_tokens, those read from the image model's cache (billed at its cached
    # prices), and of those the images: a part of the request's cached_tokens.
    cached_tokens: int = 0
    cached_image_tokens: int = 0


# The image generation tool's counts by their names in the log line, the rollup and the
# report (each ``image_generation_<count>``), in that order.
IMAGE_GENERATION_COUNTS = (
    "image_generation_input_tokens",
    "image_generation_input_image_tokens",
    "image_generation_output_tokens",
    "image_generation_output_image_tokens",
)


def image_generation_counts(generation: ImageGeneration | None) -> dict[str, int]:
    """The tool's counts under ``IMAGE_GENERATION_COUNTS``' names; 0 each without one."""
    if generation is None:
        return dict.fromkeys(IMAGE_GENERATION_COUNTS, 0)
    return dict(
        zip(
            IMAGE_GENERATION_COUNTS,
            (
                generation.input_tokens,
                generation.input_image_tokens,
                generation.output_tokens,
                generation.output_image_tokens,
            ),
            strict=True,
        )
    )


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    # Prompt tokens served from the provider's prompt cache (part of prompt_tokens).
    cached_tokens: int = 0
    # Prompt tokens the provider wrote to its prompt cache (part of prompt_tokens):
    # Anthropic and Bedrock bill them above the input price.
    cache_write_tokens: int = 0
    # Of cache_write_tokens, those written to Claude's 1-hour cache, billed above the
    # 5-minute writes (2x the input price against 1.25x); the rest are 5-minute writes.
    cache_write_1h_tokens: int = 0
    # Requests the provider's own tools made while answering, billed per request on top of
    # the tokens, by tool name: Anthropic's usage.server_tool_use ("web_search_requests"
    # is {"web_search": N}). Only counts above 0.
    server_tool_requests: dict[str, int] = field(default_factory=dict)
    # What the provider itself says it charged for the request, in picodollars, when it
    # says (OpenRouter's usage.cost): the price of a model the table does not price.
    reported_cost_picousd: int | None = None
    # Prompt tokens of audio (part of prompt_tokens, cached audio included), which Gemini
    # bills above text, image and video (usageMetadata.promptTokensDetails), and of them
    # those read from its cache (part of cached_tokens; cacheTokensDetails).
    audio_tokens: int = 0
    cached_audio_tokens: int = 0
    # Completion tokens of audio (part of completion_tokens), which OpenAI's audio models
    # bill far above text (gpt-audio: $64 per million against $10;
    # completion_tokens_details.audio_tokens) and Gemini's TTS models report apart
    # (usageMetadata.candidatesTokensDetails' AUDIO entry).
    audio_output_tokens: int = 0
    # Completion tokens of images (part of completion_tokens, none of them audio), which
    # Gemini's image models report apart (candidatesTokensDetails' IMAGE entry) and bill
    # far above text (2.5 Flash Image: $30 per million against $2.50).
    image_output_tokens: int = 0
    # Prompt tokens of images (part of prompt_tokens, none of them audio), which OpenAI's
    # GPT Image models bill apart from text (the Images API's
    # usage.input_tokens_details.image_tokens: the pictures to edit).
    image_tokens: int = 0
    # Of cached_tokens, the images (the image generation tool's cache reads of pictures),
    # billed at the image cached input price; a part of image_tokens too.
    cached_image_tokens: int = 0
    # The image generation tool's tokens (``ImageGeneration``), counted in prompt_tokens
    # and completion_tokens as parts of them (its input and its output) and billed at the
    # image model's prices; None: the request drew no picture.
    image_generation: ImageGeneration | None = None
    # The prompt's characters as the provider bills them, when it bills characters rather
    # than tokens (Vertex's text embeddings: metadata.billableCharacterCount); None: it
    # reported none.
    billable_characters: int | None = None
    # The searches the provider bills a rerank by, when it bills searches rather than
    # tokens (Cohere: meta.billed_units.search_units; rerank_api); None: by tokens.
    search_units: int | None = None
    # The seconds of audio the provider billed by duration (whisper-1's usage ``seconds``,
    # a verbose_json answer's ``duration``); counted in prompt_tokens and audio_tokens as
    # ten tokens a second (audio_api), billed by the model's per-minute price when it has
    # one. None: not billed by duration.
    audio_seconds: float | None = None
    # The counts of the request's sampling steps before its answer, each on its own
    # (Anthropic's compaction steps, usage.iterations); part of the counts above. The
    # long-context price is judged on each step's own prompt, not on their sum.
    steps: tuple[Usage, ...] = ()

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class CutAttempt:
    """A failover attempt whose provider started an answer (its status below 400) that
    never reached the client: cut mid-body and retried on the next member. Its provider
    billed it; the gateway charges it as a cut answer (``stages.cut_answer``), beside the
    answer the client got, in every ledger."""

    provider: str
    # The chain member (config name) the attempt served, whose price priced it.
    model: str
    usage: Usage
    cost: Cost


def with_cut_attempts(usage: Usage, attempts: tuple[CutAttempt, ...]) -> Usage:
    """The request's token counts with its cut attempts': what the log line, the span and
    the quota carry. The cache, tool and search counts are the answer's (a cut one has
    none)."""
    prompt = usage.prompt_tokens + sum(each.usage.prompt_tokens for each in attempts)
    completion = usage.completion_tokens + sum(each.usage.completion_tokens for each in attempts)
    return Usage(
        prompt,
        completion,
        usage.total_tokens + sum(each.usage.total_tokens for each in attempts),
        usage.cached_tokens,
        usage.cache_write_tokens,
        usage.cache_write_1h_tokens,
        usage.server_tool_requests,
        audio_tokens=usage.audio_tokens,
        cached_audio_tokens=usage.cached_audio_tokens,
        audio_output_tokens=usage.audio_output_tokens,
        image_output_tokens=usage.image_output_tokens,
        image_tokens=usage.image_tokens,
        image_generation=usage.image_generation,
        search_units=usage.search_units,
    )


@dataclass(frozen=True, slots=True)
class Identity:
    """Who sent a request. ``method`` is how they proved it: api_key, jwt or none."""

    method: str
    api_key_id: str | None = None
    user_id: str | None = None
    group_id: str | None = None
    # Every group the caller belongs to (access rules look at all of them).
    groups: tuple[str, ...] = ()
    jwt_provider: str | None = None
    # Claims the JWT provider maps into the log (e.g. org, email).
    claims: dict[str, object] = field(default_factory=dict)
    allowed_models: tuple[str, ...] = ()
    allowed_routes: tuple[str, ...] = ()


ANONYMOUS = Identity(method="none")


@dataclass(frozen=True, slots=True)
class BodyHints:
    """What Envoy read from a JSON request body before the gateway saw it."""

    model: str | None
    stream: bool | None


# Frozen: a few constant overrides serve every request, each answered by one prebuilt
# protobuf (envoy_messages).
@dataclass(slots=True, frozen=True)
class ModeOverride:
    """Processing modes to change for the rest of this request (Envoy ``mode_override``)."""

    skip_request_body: bool = False
    skip_response_headers: bool = False
    response_body: str | None = None  # "NONE", "STREAMED" or "BUFFERED"


@dataclass(slots=True)
class PhaseOutput:
    """What one phase tells Envoy: header and body mutations, routing, metadata."""

    set_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: list[str] = field(default_factory=list)
    body: bytes | None = None
    clear_route_cache: bool = False
    mode_override: ModeOverride | None = None
    metadata: dict[str, Any] | None = None
    # The client's API (its error shape) for Envoy's own replies (headers.CLIENT_API_KEY):
    # a few constant values, each written into the answer's metadata from one prebuilt
    # protobuf rather than field by field as ``metadata`` is.
    client_api: str | None = None
    # Set when the gateway answers the client itself (status, body, headers): no upstream call.
    answer: tuple[int, bytes, dict[str, str]] | None = None
    # Set when the client's response must fail with this error though its status may
    # have left: a failure its body cannot show (raw audio) must not look like a whole,
    # short answer (``envoy_messages.reset_response``).
    reset: GatewayError | None = None


@dataclass(slots=True)
class RequestContext:
    runtime: Runtime
    started: float = field(default_factory=time.monotonic)
    # When the phase being served reached the processor (time.monotonic()): Envoy's wait
    # for its answer (envoy.message_timeout_ms) runs from there, store waits included.
    phase_started: float = 0.0
    started_wall: float = field(default_factory=time.time)
    request_id: str = ""
    method: str = ""
    path: str = ""
    # The path without its query as every record shows it once a segment was found to
    # hold a credential (``stages.model_credentials``); None while it is the client's
    # as sent. Envoy's access log and span read it from the gateway's metadata.
    recorded_path: str | None = None
    # The segments of the path found to hold a credential, as sent and percent-decoded,
    # for the log line's error_message; None until the whole path was looked at.
    path_credentials: list[str] | None = None
    request_headers: dict[str, str] = field(default_factory=dict)
    route: Route | None = None
    # The credential the request presents, as read for a route that names the header
    # (or None): (that header, the credential). Read once by authentication, then by
    # each check that hides it (stages.authentication.presented_credential).
    credential_read: tuple[str | None, str | None] | None = None
    identity: Identity = ANONYMOUS
    # True once the request is known to be AI traffic that gets accounted.
    accounted: bool = False
    body: dict[str, Any] | None = None
    # An image edit's form (``multipart_form``): ``body`` holds its text fields, and the
    # form where they lie, so that the client's bytes go upstream with only the fields
    # the gateway changed spliced in (``backends``).
    form: MultipartForm | None = None
    # The configured model serving the request (or the name the client asked for, where
    # the config lists none): for a model group's name, the member drawn for it.
    model: str | None = None
    # The model group the client asked for by name (``model_groups``), whose member
    # ``model`` is; None for a request that named no group.
    model_group: str | None = None
    # A failover attempt (stages.attempt) of a request that named no group: the name the
    # client asked for the chain's model by (an alias, or the model's own name), which the
    # attempt's metrics and translated answer name, as the request's do (downstream,
    # ``model`` is that name itself; in the attempt, the chain member's). None otherwise.
    model_asked: str | None = None
    upstream_model: str | None = None
    # Failover: the chain member (its config name) that answered; what prices the request.
    answered_model: str | None = None
    provider: str | None = None
    provider_type: ProviderType | None = None
    # The API the provider speaks for this request's model, which decides how its answer
    # is read: the type's own, but Vertex's Claude speaks Anthropic's, its other models
    # OpenAI's (backends.provider_api).
    provider_api: ProviderType | None = None
    # The client asked for a stream; from the response headers on, also an answer that
    # came as one unasked (``stream_unasked``): read, estimated and timed as a stream.
    stream: bool = False
    # A provider (or a proxy) streamed a request that did not ask (backends.plan_response
    # reads an answer by its own framing): the log line's `stream` stays false.
    stream_unasked: bool = False
    # The client asked for the usage chunk itself; otherwise the gateway hides it.
    client_wants_usage: bool = False
    # The status the client got (a translated provider error changes it: 529 -> 503).
    response_status: int = 0
    # The status the upstream side's answer came with: the provider's, or Envoy's own
    # reply when the provider could not be reached (None: nothing came from upstream).
    upstream_status: int | None = None
    # Envoy's response code details, when it sent them with the response headers
    # (``via_upstream`` for the provider's answer; a controller's Envoy asked for them,
    # gateway_api): what tells Envoy's own reply from the provider's (envoy_replies).
    response_details: str | None = None
    response_model: str | None = None
    translator: ResponseTranslator | None = None
    usage: Usage = field(default_factory=Usage)
    upstream: Upstream | None = None
    # The primary model of a request that may fail over (Envoy retries to fallbacks). In
    # a failover attempt (stages.attempt): the same, but only while a later member
    # remains, so an error Envoy retries is counted where the client never sees it.
    failover_model: str | None = None
    # Failover: the attempts cut after their provider started answering (stages.cut_answer).
    # A tuple: most requests share the empty one and allocate nothing.
    cut_attempts: tuple[CutAttempt, ...] = ()
    # Failover: the key under which this request's attempts on a fallback name themselves
    # in the store as they are sent, for a client that hangs up before any answer
    # (store.attempts_in_flight); None for a chain of one member, or without a store.
    attempts_key: str | None = None
    # The chain member whose attempt was in flight when the client hung up, as the store
    # named it (stages.attempt_in_flight): the allowance it was sent is charged. None: the
    # primary's, or no hang-up.
    attempt_in_flight: Upstream | None = None
    # The store could not say which attempt was in flight when the client hung up: the
    # request is charged at its primary, and its log line says so (attempt_unknown).
    attempt_unknown: bool = False
    # ext_proc attributes of the first message (the per-attempt filter's host metadata).
    attributes: Any = None
    # Set when a stage changed the parsed body (e.g. a hard cap on max_tokens).
    body_changed: bool = False
    # When the request started, on the quota store's clock (stages.quota): the calendar
    # period its token quotas count it in, whenever its body is checked.
    started_store_time: float | None = None
    # The quota reservation made for this request, settled when it ends.
    reservation: Reservation | None = None
    usage_reported: bool = False
    # A stream that ended without a usage report: usage estimated from what it carried.
    usage_estimated: bool = False
    generated_chars: int = 0
    # The stream's bytes after the last line end seen, not counted yet: a text value the
    # body's chunks cut in two is counted whole (stages.partial_usage).
    generated_tail: bytearray | None = None
    # The prompt's estimated tokens (estimated_prompt_tokens), once first needed.
    prompt_estimate: int | None = None
    # The tokens of the stored response a Responses API request continues, as recorded
    # (stages.response_owner): context the provider adds that the body does not show.
    stored_context_tokens: int = 0
    # Whether that stored response's answer was guarded where it was created: the provider
    # keeps it unguarded, and a continuation's input items hold it (stages.stored_responses).
    stored_context_guarded: bool = False
    # Set once the response this request created is recorded as the caller's.
    owner_recorded: bool = False
    first_byte_at: float | None = None
    # No response-headers message: status and the rest come with the first body chunk.
    lean_response: bool = False
    # Envoy's reading of the body's `model` and `stream`, sent with the request
    # headers (None: Envoy did not parse the body); the lean choice made from them,
    # which the gateway's own parse of the body must confirm.
    body_hints: BodyHints | None = None
    lean_from_hints: BodyHints | None = None
    error: GatewayError | None = None
    # A refusal the gateway sent inside a stream whose 200 had left (a response guard's
    # REJECT): what the log line and the span name as the request's error. Not ``error``,
    # which says nothing was produced: the provider's answer up to it is charged.
    stream_refusal: GatewayError | None = None
    # The response's guard state (a StreamGuard, or the route's guards for a buffered answer).
    response_guard: Any = None
    response_guard_parts: list[bytes] = field(default_factory=list)
    # The client or upstream went away before the response completed.
    aborted: bool = False
    completed: bool = False
    # Envoy took the gateway's answer to the request's last message without a refusal or
    # an answer of the gateway's own: the request left for its provider from there
    # (processor; a client that leaves after it is charged, stages.cut_answer).
    request_released: bool = False
    # Telemetry (docs/logging.md). The W3C trace id Envoy's tracer passed on, if any.
    trace_id: str | None = None
    # Monotonic times: the request went upstream, the first response body byte
    # came back (time to first token for streams), the response ended.
    upstream_sent_at: float | None = None
    first_token_at: float | None = None
    response_ended_at: float | None = None
    # What the quota check decided: none, allowed, rejected, failed_open, unavailable.
    quota_decision: str | None = None
    quota_rule: str | None = None
    # Why the model stopped, one per choice, as the client saw it ("stop", "length"...).
    finish_reasons: list[str] = field(default_factory=list)
    # The tail of the last response chunk, so a reason cut in two is still read.
    finish_carry: bytes = b""
    # The same for the stream's end marker ("data: [DONE]"); it starts as a line start.
    stream_end_carry: bytes = b"\n"
    # The span metadata has gone to Envoy with the usage (before the stream's end).
    usage_in_metadata: bool = False
    # The metadata of the answered stream, priced, has gone to Envoy (its cost included).
    priced_in_metadata: bool = False
    # Monotonic time a running stream's span counts were last sent (stages.telemetry).
    span_usage_at: float = 0.0
    # Prompt and completion text, kept only when the log or traces include content.
    content: ContentCapture | None = None
    # Set once the request is priced (extproc.chargeback.pricing.request_cost).
    cost: Cost | None = None
    # The service tier the provider reported serving the request at (OpenAI "flex",
    # Anthropic "priority"), which priced it; set with the cost. None: none reported.
    service_tier: str | None = None
    # After a failover, the tier the request asked of the Bedrock member that answered,
    # which Bedrock serves as asked: it prices the answer until the answer names its own
    # (a stream cut before Bedrock's metadata, an answer Envoy dropped for its size:
    # stages.response, chargeback.pricing.answered_tier).
    tier_asked: str | None = None
    # The inference geography the provider reported running the request in (Anthropic
    # "us"), which priced it; set with the cost. None: none reported.
    inference_geo: str | None = None
    # Set by guardrails: one entry per guard that acted ({guard, phase, action, ...}).
    guardrail_decisions: list[dict[str, Any]] = field(default_factory=list)
    # MCP / A2A routes: the call's record (extproc.agents).
    agent: AgentCall | None = None
    # A request to a stored Responses API response by its id (stages.stored_responses).
    stored_response: StoredResponseCall | None = None
    # Set when this request needs no credentials on an authenticated route (an A2A agent card).
    public: bool = False

    @property
    def asked_model(self) -> str | None:
        """The model the client asked for as the log line, the metrics and the rollup
        name it: a group's name rather than its member's (``model``); in a failover
        attempt, the name the client asked by rather than the chain member's."""
        return self.model_group or self.model_asked or self.model

    @property
    def group_member(self) -> str | None:
        """For a request that named a model group, the member that served it (after
        failover, the chain member that answered): the log line's ``group_member``, the
        span's ``aigw.group_member``. None for a request that named no group."""
        return (self.answered_model or self.model) if self.model_group else None

    @property
    def error_shape(self) -> str:
        """How this request's client expects errors: ``anthropic`` on Messages routes
        (and on the model list for a client that sends ``anthropic-version``: Anthropic's
        SDKs list models at OpenAI's path), ``bedrock`` on Converse routes, ``google`` on
        Gemini's, ``jsonrpc`` on MCP and A2A routes."""
        route = self.route
        if route is None:
            return "openai"
        if (
            route.api is RouteApi.OPENAI_MODELS
            and anthropic_models.CLIENT_HEADER in self.request_headers
        ):
            return "anthropic"
        return _API_SHAPES[route.api]

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000.0

    def time_to_first_token_s(self) -> float | None:
        """A stream's time to first token, for the log line and the histogram alike: the
        request headers to the first body chunk of its answer. None for a non-streamed
        answer, and for an error status or a redirect: their body is no token, and a
        provider's quick 429s (or Envoy's 504 after its timeout) would move the
        percentiles an alert reads with no token sent any sooner or later."""
        if not self.stream or self.first_token_at is None or no_answer(self.response_status):
            return None
        return max(0.0, self.first_token_at - self.started)

    def estimated_prompt_tokens(self) -> int:
        """The prompt's tokens as the quota estimate counts them, walked once per request:
        the quota reserves and caps by it, and a running stream reports at every chunk
        what it would be charged were it cut there."""
        if self.prompt_estimate is None:
            estimate: Callable[[dict[str, Any]], int] = estimate_prompt_tokens
            if self.route is not None:
                estimate = _PROMPT_ESTIMATES.get(self.route.api, estimate_prompt_tokens)
                if self.route.api is RouteApi.BEDROCK_INVOKE and not reads_as_claude(
                    self.upstream_model or "", self.body or {}
                ):
                    # Another family's body: its text, wherever the family puts it.
                    estimate = estimate_invoke_body
            self.prompt_estimate = estimate(self.body or {}) + self.stored_context_tokens
            audio = self.route is not None and self.route.api is RouteApi.OPENAI_AUDIO
            if self.form is not None and audio:
                # The audio's tokens, estimated from the file's size (audio_api).
                self.prompt_estimate += audio_prompt_tokens(self.form)
            elif self.form is not None:
                # An image edit's pictures are input tokens too.
                self.prompt_estimate += input_image_tokens(self.form, self.body or {})
        return self.prompt_estimate

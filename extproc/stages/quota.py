"""Token quotas and rate limits: reserve before the upstream call, settle after it.

At the request body (the model is known), every limit that applies to the
caller is checked and a token estimate reserved, in one Redis round trip. A
refusal is a 429 naming the subject, the limit and when it resets, with
``retry-after``. Every AI answer carries OpenAI's ``x-ratelimit-*`` headers for
the tightest request and token limits; an Anthropic client's carry them under
Anthropic's ``anthropic-ratelimit-*`` names too. When the response ends, the token
reservation is corrected with the provider's count, or with the gateway's estimate
when an answer came without one (``partial_usage``, ``cut_answer``), or released when
nothing was produced, off the response path; plus, after a failover, what the attempts
cut after their provider started answering are charged (``cut_answer``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable
from dataclasses import replace

from extproc import bedrock_invoke_bodies as invoke_bodies
from extproc import converse_api, gemini_api
from extproc.answer_status import no_answer
from extproc.audio_api import audio_prompt_tokens, estimated_seconds, transcript_allowance
from extproc.backends import ANTHROPIC_APIS, serves_invoke_body
from extproc.bedrock_invoke_bodies import reads_as_claude
from extproc.chargeback.pricing import failover_members, request_cost
from extproc.completions_api import ALLOWANCE_FIELDS as COMPLETIONS_ALLOWANCE_FIELDS
from extproc.completions_api import completion_allowance as text_completion_allowance
from extproc.completions_api import generated_choices
from extproc.config.model import (
    INPUT_ONLY_APIS,
    MESSAGES_BODY_APIS,
    UNMETERED_APIS,
    ProviderType,
    RouteApi,
)
from extproc.context import PhaseOutput, RequestContext, Usage
from extproc.errors import (
    GatewayError,
    RateLimitError,
    ServiceQuotaExceededError,
    ServiceUnavailableError,
)
from extproc.headers import metadata_key
from extproc.images_api import picture_allowance
from extproc.openai_inputs import choices
from extproc.providers import vertex_endpoints
from extproc.quota.anthropic_headers import anthropic_rate_limit_headers
from extproc.quota.estimate import (
    CHAT_ALLOWANCE_FIELDS,
    RESPONSES_ALLOWANCE_FIELDS,
    cap_completion,
    completion_allowance,
)
from extproc.quota.rules import Limit, tightest
from extproc.quota.store import Denial, PromptCost, QuotaStore, Reservation, refusal_wait
from extproc.quota.thinking_budget import (
    MIN_THINKING_BUDGET,
    cap_thinking,
    converse_fields,
    least_completion,
    thinking_budget,
)
from extproc.rerank_api import estimated_search_units
from extproc.runtime import Upstream
from extproc.speech_api import audio_allowance, reports_tokens
from extproc.stages.subject_credentials import refuse_credential_in_subjects
from extproc.store.outage_log import OutageLog
from extproc.translators import openai_bedrock
from extproc.translators.claude_thinking import takes_adaptive_thinking
from extproc.translators.openai_anthropic import DEFAULT_MAX_TOKENS as CLAUDE_DEFAULT_MAX_TOKENS
from extproc.translators.openai_anthropic import named_max_tokens, thinking_budget_for
from extproc.translators.openai_image_usage import tool_picture_allowance

log = logging.getLogger(__name__)
# The longest wait a refused client should sit out before its SDK retries on its own: the
# bound the OpenAI and Anthropic TypeScript SDKs put on `retry-after`. A longer one (an
# hour's budget, a calendar quota) gets `x-should-retry: false`, which those SDKs and
# their Python twins obey: the Anthropic Python client slept whatever `retry-after`
# said (weeks, for a monthly quota) with its caller hanging.
RETRY_WITHIN_S = 60
# A cost budget counts millionths of a dollar; the chargeback's ledgers, picodollars.
PICOUSD_PER_MICRO_USD = 10**6


class QuotaStage:
    def __init__(self) -> None:
        # Every request a rule covers meets the outage: said once, not each time.
        self._failing_open = OutageLog(log, "quota store unavailable, failing open")
        self._failing_closed = OutageLog(
            log, "quota store unavailable, failing closed (503 quota_store_unavailable)"
        )

    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> None:
        store = ctx.runtime.services.quota_store
        if store is not None and ctx.runtime.quota_rules:
            # A token quota counts a request in the period it started in, the one its log
            # line's timestamp and its usage rollup's hour name (RuleSet.limits_for). Read
            # when its body was checked (after its upload and its guards), a request begun
            # on the last evening of a month counted in the next month's quota and in
            # this month's report, which then disagreed.
            ctx.started_store_time = store.now()

    def request_body(
        self, ctx: RequestContext, out: PhaseOutput, body: bytes
    ) -> Awaitable[None] | None:
        runtime = ctx.runtime
        store = runtime.services.quota_store
        if not runtime.quota_rules or store is None or ctx.model is None or ctx.body is None:
            if ctx.model is not None:
                ctx.quota_decision = "none"
            return None
        limits = runtime.quota_rules.limits_for(
            ctx.identity,
            ctx.request_headers,
            ctx.model,
            store.now(),
            runtime.canonical_model.get(ctx.model),
            ctx.started_store_time,
        )
        # A token count generates nothing, nor does a moderation (free, no usage): it
        # counts as one request, reserves no tokens, and no token or cost budget, spent or
        # not, refuses it.
        counting = ctx.route is not None and ctx.route.api in UNMETERED_APIS
        if counting:
            limits = [limit for limit in limits if limit.kind == "r"]
        if not limits:
            ctx.quota_decision = "none"
            return None
        # Before the subjects are noted (the gauges) or counted (the store's keys).
        refuse_credential_in_subjects(ctx, limits)
        if runtime.services.quota_subjects is not None:
            runtime.services.quota_subjects.note(limits)
        prompt = 0 if counting else fixed_tokens(ctx)
        completion = 0 if counting else reserved_completion(ctx)
        costed = any(limit.kind == "c" for limit in limits)
        usd_micros = estimated_usd_micros(ctx, prompt, completion) if costed else 0
        # Weighed only where an enforced hard-capped token budget will read it.
        capped = any(limit.hard_cap and limit.kind == "t" and limit.enforce for limit in limits)
        room = _capped_room(ctx) if capped and not counting else 0
        # A cap that lowers the answer lowers what its cost budgets hold: the store needs
        # the prompt's part of the estimates for that.
        share = (
            PromptCost(prompt, estimated_usd_micros(ctx, prompt, 0))
            if capped and costed and completion
            else None
        )
        return self._reserve(ctx, out, limits, prompt + completion, usd_micros, room, share)

    async def _reserve(
        self,
        ctx: RequestContext,
        out: PhaseOutput,
        limits: list[Limit],
        cost: int,
        usd_micros: int,
        room: int,
        share: PromptCost | None,
    ) -> None:
        services = ctx.runtime.services
        store = services.quota_store
        assert store is not None
        timeout = ctx.runtime.config.store.timeout_ms / 1000.0
        try:
            # asyncio.timeout, not wait_for: no extra task on the request path.
            async with asyncio.timeout(timeout):
                result = await store.reserve(limits, cost, usd_micros, room, share)
                if _settling_frees(ctx, store, result, cost):
                    # Refused for what running requests hold, all of which this process's
                    # own settlements, still in their batch, take off: typically the
                    # client's previous answer, a few milliseconds old. Told to retry in
                    # seconds, a client sending one request after another (a script, an
                    # agent loop) slept that long before each. They go out now, and the
                    # reservation is tried once more; only a refusal pays this.
                    if isinstance(result, Reservation):
                        store.release(result)  # the hard cap refuses it: in the same batch
                    await store.land_settlements()
                    result = await store.reserve(limits, cost, usd_micros, room, share)
        except Exception as exc:
            services.metrics.store_error("quota_reserve")
            # A shadow rule never blocks: only enforced rules can fail the request closed.
            if all(limit.fail_open or not limit.enforce for limit in limits):
                self._failing_open.failed(exc)
                ctx.quota_decision = "failed_open"
                return
            ctx.quota_decision = "unavailable"
            self._failing_closed.failed(exc)
            raise ServiceUnavailableError(
                "the quota store is unavailable; try again shortly", code="quota_store_unavailable"
            ) from None
        self._failing_open.answered()
        self._failing_closed.answered()
        if isinstance(result, Denial):
            now = store.now()
            refusal, limit = _store_refusal(ctx, result, cost, now)
            services.metrics.rate_limit(limit.rule, limit.subject_kind)
            ctx.quota_decision = "rejected"
            ctx.quota_rule = limit.rule
            raise for_client(ctx, refusal, now)
        ctx.quota_decision = "allowed"
        ctx.reservation = result
        # Envoy's route adds the x-ratelimit-* headers to the answer from this
        # metadata, on the full and the lean response path alike (envoy_bootstrap), and
        # on the routes Anthropic clients reach, anthropic-ratelimit-* too.
        now = store.now()
        headers = rate_limit_headers(result, now)
        if ctx.error_shape == "anthropic":
            headers.update(anthropic_rate_limit_headers(headers, now))
        published = {metadata_key(name): value for name, value in headers.items()}
        out.metadata = {**(out.metadata or {}), **published}
        if cost:  # a count has no completion to cap (and no max_tokens to set)
            _apply_hard_cap(ctx, result)

    def done(self, ctx: RequestContext) -> None:
        reservation = ctx.reservation
        store = ctx.runtime.services.quota_store
        if reservation is None or store is None:
            return
        if ctx.error is not None and ctx.upstream is not None and ctx.upstream_sent_at is None:
            # Refused by the gateway after reserving, before the request left for its
            # provider (the translation refused a field the model cannot take): all goes
            # back, the request too, as for a hard cap's refusal. Counted, each such 400
            # took one of the subject's requests_per_* and its valid requests got 429s.
            store.release(reservation)
            return
        if ctx.aborted and not ctx.request_released:
            # The client left before Envoy took the gateway's go-ahead (its answer to the
            # body was being written when the stream closed): no provider saw the request,
            # so all goes back, as for a client gone while its reservation was on its way
            # (CoalescingCaller's give-back). Its tokens were given back before, but its
            # request stayed counted: a client timing out there used up its key's
            # requests_per_minute with requests that never reached a provider.
            store.release(reservation)
            return
        # Failover attempts cut after their provider started answering, billed beside
        # the answer (cut_answer); none on almost every request.
        cut = sum(each.usage.total_tokens for each in ctx.cut_attempts) if ctx.cut_attempts else 0
        # Cost budgets settle at what the request costs in the chargeback's ledgers (its
        # answer's and cut attempts' cost, rounded up to the next millionth of a dollar).
        costed = any(limit.kind == "c" for limit in reservation.limits)
        cut_cost = sum(each.cost.picousd for each in ctx.cut_attempts)
        if ctx.usage_reported or ctx.usage_estimated:
            spent = usd_micros(request_cost(ctx).picousd + cut_cost) if costed else None
            store.settle(reservation, ctx.usage.total_tokens + cut, spent)
            return
        # No usage report: nothing was produced when the gateway refused after
        # reserving, the provider answered with an error, or the request died
        # before it left for its provider; release. An answer that started without
        # one was estimated before this runs (a stream by partial_usage, a JSON
        # answer, whole or cut, by cut_answer), and so was a request that left for
        # its provider and got no answer at all (cut_answer), so what is left keeps
        # its reservation (a count: it reserved no tokens).
        produced_nothing = (
            ctx.error is not None
            or no_answer(ctx.response_status)
            or (ctx.aborted and ctx.first_byte_at is None)
        )
        if produced_nothing:
            # The answer produced nothing, but attempts cut before it were billed (every
            # attempt cut: the client got Envoy's 502): settled at theirs, not released.
            store.settle(reservation, cut or None, usd_micros(cut_cost) if cut else None)
        elif cut:
            # The answer keeps its reservation; its cut attempts come on top of it.
            spent = _reserved(reservation, "c") + usd_micros(cut_cost)
            store.settle(reservation, _reserved(reservation, "t") + cut, spent)


def _settling_frees(
    ctx: RequestContext, store: QuotaStore, result: Reservation | Denial, cost: int
) -> bool:
    """Whether ``result`` refuses the request (the store's refusal, or the hard cap's of a
    budget left too short) only for what running requests hold of budgets that settlements
    this process has not sent yet take off: landed, they may let it through."""
    if isinstance(result, Denial) and not result.too_short:
        refusals = result.refusals or (result,)
        held = all(each.only_held for each in refusals)
        return held and store.settling([each.limit for each in refusals])
    if not cost or ctx.body is None:
        return False  # a count: nothing to cap
    if isinstance(result, Denial):
        # The hard cap's refusal in the store: its budgets as they stood.
        result = _as_reservation(list(result.with_room))
    short = _capped_short(ctx, result)
    if not short:
        return False
    prompt = ctx.estimated_prompt_tokens()
    room = _answer_room(ctx)
    held = all(result.effective[i] - result.settled_before(i) - prompt >= room for i in short)
    return held and store.settling([result.limits[i] for i in short])


def _capped_room(ctx: RequestContext) -> int:
    """The least an enforced hard-capped token budget must have left for this request:
    its prompt (and tool's picture) and the least answer of each choice. The reserve
    script refuses it with less (``_capped_short`` reads the same bound), before it
    counts the request in any limit."""
    return fixed_tokens(ctx) + _least_completion(ctx) * _choices(ctx)


def _capped_short(ctx: RequestContext, reservation: Reservation) -> list[int]:
    """The enforced hard-capped token budgets that left this request too little for its
    prompt and least answer: ``_apply_hard_cap`` refuses it when there is one."""
    capped = [
        index
        for index, limit in enumerate(reservation.limits)
        if limit.hard_cap and limit.kind == "t" and limit.enforce
    ]
    if not capped:
        return []  # the usual admission: nothing more to weigh
    prompt = fixed_tokens(ctx)
    choices = _choices(ctx)
    least = _least_completion(ctx)
    return [i for i in capped if (_left_before(reservation, i) - prompt) // choices < least]


def _reserved(reservation: Reservation, kind: str) -> int:
    """What a request reserved of each budget of ``kind`` ("t": its token estimate; "c":
    its cost estimate, in millionths of a dollar)."""
    return max(
        (
            reserved
            for limit, reserved in zip(reservation.limits, reservation.reserved, strict=True)
            if limit.kind == kind
        ),
        default=0,
    )


def estimated_usd_micros(ctx: RequestContext, prompt: int, completion: int) -> int:
    """What a request may cost, for its cost budgets: its ``prompt`` estimate (tokens) at
    its model's input price and the answer's allowance, ``completion``, at the output
    price, in millionths of a dollar, rounded up. An unpriced model's request costs
    nothing here, as in the chargeback's ledgers (counted there as unpriced). A failover
    chain's request may be answered, and billed, by any member: the dearest one's prices
    are reserved."""
    models = {ctx.model, *failover_members(ctx)} if ctx.failover_model else {ctx.model}
    table = ctx.runtime.prices
    billed = billed_prompt_usage(ctx, prompt)
    if billed is not None:
        # The audio API and rerank (which never fail over): priced as the bill will be,
        # not at the text prices: a transcription's audio at its own price (whisper-1's by
        # the minute), tts-1's characters at theirs, the speech gpt-4o-mini-tts writes as
        # audio, a rerank's searches at the price per search.
        usage = replace(
            billed,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            audio_output_tokens=completion if ctx.form is None else 0,
        )
        return usd_micros(table.cost(ctx.model, usage).picousd)
    priced = [prices for model in models if (prices := table.prices(model)) is not None]
    if not priced:
        return 0
    return usd_micros(max(prompt * each.input + completion * each.output for each in priced))


def billed_prompt_usage(ctx: RequestContext, prompt: int) -> Usage | None:
    """An audio or rerank request's ``prompt`` estimate as a usage to price, as the
    provider's report of it would be: a transcription's audio part (from the file's
    size, ``audio_api``) as audio tokens and seconds (audio tokens at the audio input
    price, whisper-1's seconds by the minute); tts-1's characters as billable characters
    (at its per-character price); a rerank's searches (one per 100 documents) for a model
    priced per search, its tokens alone for one priced by them (no search is billed
    there, and the log line names none); None for any other request."""
    route = ctx.route
    if route is not None and route.api is RouteApi.RERANK:
        prices = ctx.runtime.prices.prices(ctx.model)
        if prices is None or prices.search_unit is None:
            return Usage(prompt, 0, prompt)
        return Usage(prompt, 0, prompt, search_units=estimated_search_units(ctx.body))
    if route is None or route.api is not RouteApi.OPENAI_AUDIO:
        return None
    if ctx.form is None:
        # Text to speech: its estimate is the characters of its input.
        if reports_tokens(ctx.model or "", ctx.upstream_model or ""):
            return Usage(prompt, 0, prompt)
        return Usage(prompt, 0, prompt, billable_characters=prompt)
    seconds = estimated_seconds(ctx.form)
    audio = min(audio_prompt_tokens(ctx.form), prompt)
    return Usage(prompt, 0, prompt, audio_tokens=audio, audio_seconds=float(seconds))


def usd_micros(picousd: int) -> int:
    """Picodollars (the chargeback's unit) as the millionths of a dollar a cost budget
    counts, rounded up: a request of a few cheap tokens still counts."""
    return -(-picousd // PICOUSD_PER_MICRO_USD)


def fixed_tokens(ctx: RequestContext) -> int:
    """The tokens a request reserves beside its answer's allowance, which no allowance
    field bounds: its prompt estimate and its tool's picture (``tool_picture``). The
    hard cap weighs them as it weighs the prompt: room for them, or a 429; the answer's
    allowance gets the rest."""
    return ctx.estimated_prompt_tokens() + tool_picture(ctx)


def tool_picture(ctx: RequestContext) -> int:
    """For a Responses request with the image generation tool, one picture at the tool's
    quality and size (``openai_image_usage.tool_picture_allowance``): what the quota
    reserves for it and what a stream cut while the tool drew is charged per picture
    (``partial_usage``); 0 for any other request."""
    route = ctx.route
    if route is not None and route.api is RouteApi.OPENAI_RESPONSES and ctx.body is not None:
        return tool_picture_allowance(ctx.body)
    return 0


def _answer_room(ctx: RequestContext) -> int:
    """The least a hard-capped budget must leave beside the prompt: the least answer of
    each choice, and the tool's picture, which no field bounds (a refusal tells the
    prompt apart from it)."""
    return max(1, _least_completion(ctx)) * _choices(ctx) + tool_picture(ctx)


def reserved_completion(ctx: RequestContext, member: Upstream | None = None) -> int:
    """The completion allowance the quota reserves for a request (beside its prompt
    estimate): the body's own, else the bound its translation writes (Claude's:
    ``_unnamed_allowance``), else ``quotas.default_max_tokens``; none for an embeddings
    call, whose vectors are not billed as tokens (a token count reserves nothing at all).
    The allowance is per choice, and a chat completion's ``n`` or a text completion's
    batch and ``best_of`` ask for several (``_choices``): the reservation is the
    allowance times their number.

    Read from the body as it went upstream: once a hard cap lowered the allowance, the
    capped one, the most the provider may generate (``cut_answer`` charges it).

    A failover request may be served by any member of its chain, and a member's
    translation may allow more than the primary's (an OpenAI chat request's
    ``reasoning_effort`` adds Claude's thinking budget): the request reserves the
    largest, so a hard cap leaves every member the room it needs. ``member``: the
    allowance of that one chain member's attempt (a cut attempt's charge)."""
    route = ctx.route
    if ctx.body is None or (route is not None and route.api in INPUT_ONLY_APIS):
        return 0
    if route is not None and route.api is RouteApi.OPENAI_IMAGES:
        return picture_allowance(ctx.body)  # n pictures at their quality and size
    if route is not None and route.api is RouteApi.OPENAI_AUDIO:
        if ctx.form is None:
            # Text-to-speech: the audio a model billed by tokens may write (speech_api).
            return audio_allowance(ctx.body, ctx.model or "", ctx.upstream_model or "")
        return transcript_allowance(ctx.form)  # the transcript of the audio's estimate
    default_max_tokens = ctx.runtime.config.quotas.default_max_tokens
    if route is not None and route.api is RouteApi.BEDROCK_CONVERSE:
        budget = thinking_budget(converse_fields(ctx.body))
        if budget is not None and converse_api.named_max_tokens(ctx.body) is None:
            # Claude asked to think with no maxTokens: room for the budget and an answer
            # of the default, as reasoning_effort reserves. The default alone left a hard
            # cap writing a maxTokens the budget cannot stay below (Bedrock's 400).
            return default_max_tokens + budget
        return converse_api.completion_allowance(ctx.body, default_max_tokens)
    if route is not None and route.api is RouteApi.GEMINI_GENERATE_CONTENT:
        return gemini_api.completion_allowance(ctx.body, default_max_tokens)
    if _other_family(ctx):
        if _embeds(ctx):
            return 0  # vectors: nothing generated
        body = ctx.body
        allowance = max(
            invoke_bodies.completion_allowance(model, body, default_max_tokens)
            for model in _invoke_models(ctx, member)
        )
        return allowance * _choices(ctx)
    if route is not None and route.api is RouteApi.OPENAI_COMPLETIONS:
        # Its own reader: max_tokens 0 (a prompt scored) reserves no completion.
        allowance = text_completion_allowance(ctx.body, default_max_tokens)
    else:
        allowance = completion_allowance(ctx.body, default_max_tokens, _allowance_fields(ctx))
        chat = route is not None and route.api is RouteApi.OPENAI_CHAT
        if chat and named_max_tokens(ctx.body) is None:
            # The bound the request goes out with when it names none, for the member
            # that serves it or, before that is known, the largest of its chain's: a
            # hard cap writes what is reserved, which every member then keeps.
            members = [member] if member is not None else _chain_members(ctx)
            allowance = max(_unnamed_allowance(ctx, each, default_max_tokens) for each in members)
    return allowance * _choices(ctx)


def _unnamed_allowance(ctx: RequestContext, member: Upstream | None, default: int) -> int:
    """The most an OpenAI chat request that names no allowance may be answered with by
    ``member`` (None: the request's own upstream). The translation for Claude writes a
    ``max_tokens`` of its own (Anthropic's API requires one: ``openai_anthropic``'s
    default), raised by the thinking budget ``reasoning_effort`` asks for (as
    ``openai_bedrock``'s ``maxTokens`` is); any other provider bounds the answer itself,
    and the request reserves ``quotas.default_max_tokens``."""
    thinking = _claude_thinking_budget(ctx, member)
    if thinking is not None:
        return CLAUDE_DEFAULT_MAX_TOKENS + thinking
    return CLAUDE_DEFAULT_MAX_TOKENS if _writes_claude_bound(ctx, member) else default


def _invoke_models(ctx: RequestContext, member: Upstream | None = None) -> list[str]:
    """The Bedrock models an InvokeModel body of another family than Claude's may go to:
    ``member``'s, else the request's own and those of the failover members that take its
    body (``backends.serves_invoke_body``). Their defaults differ (Mistral 7B generates
    512 tokens unbounded, Mistral Large 8,192), and the one body goes to each."""
    named = ctx.upstream_model or ""
    if member is not None:
        return [member.upstream_model]
    fallbacks = [
        upstream.upstream_model
        for upstream in _chain_members(ctx)
        if upstream is not None
        and upstream.provider.type is ProviderType.BEDROCK
        and serves_invoke_body(ctx.body or {}, named, upstream.upstream_model)
    ]
    return [named, *fallbacks]


def _chain_members(ctx: RequestContext) -> list[Upstream | None]:
    """The upstreams that may serve the request: its failover chain's members, or its
    own (None)."""
    chain = ctx.runtime.failover.get(ctx.failover_model or "") if ctx.failover_model else None
    if not chain:
        return [None]
    return [upstream for _, upstream in chain.values()]


def _writes_claude_bound(ctx: RequestContext, member: Upstream | None) -> bool:
    """Whether the request goes to ``member`` (None: its own upstream) translated into
    Anthropic's Messages API (Anthropic's, Vertex AI's Claude), whose translation
    writes a ``max_tokens`` when the client named none."""
    provider_type = member.provider.type if member is not None else ctx.provider_type
    model = (member.upstream_model if member is not None else ctx.upstream_model) or ""
    return provider_type is ProviderType.ANTHROPIC or (
        provider_type is ProviderType.VERTEX and vertex_endpoints.is_claude(model)
    )


def _claude_thinking_budget(ctx: RequestContext, member: Upstream | None = None) -> int | None:
    """The thinking budget an OpenAI chat request translated for Claude (Anthropic's API,
    Vertex AI's Claude, Bedrock's Converse) asks for with ``reasoning_effort``; None for
    any other request. ``member``: as sent to that upstream (a failover chain's member)
    rather than the request's own."""
    route = ctx.route
    if route is None or route.api is not RouteApi.OPENAI_CHAT or ctx.body is None:
        return None
    provider_type = member.provider.type if member is not None else ctx.provider_type
    if provider_type is ProviderType.BEDROCK:
        # Its own reading: which turn is left open depends on Converse's translation
        # (a tool history without tools goes as text), and other models think not.
        model = (member.upstream_model if member is not None else ctx.upstream_model) or ""
        return openai_bedrock.thinking_budget_for(ctx.body, model)
    return thinking_budget_for(ctx.body) if _writes_claude_bound(ctx, member) else None


def _choices(ctx: RequestContext) -> int:
    """How many completions of the allowance each the provider generates: a chat
    completion's ``n``, a text completion's prompts times its ``best_of`` (or ``n``), an
    InvokeModel body's Cohere Command ``num_generations`` or AI21 Jamba ``n``; one for
    the other APIs."""
    route = ctx.route
    if ctx.body is None or route is None:
        return 1
    if route.api is RouteApi.OPENAI_CHAT:
        return choices(ctx.body)
    if route.api is RouteApi.OPENAI_COMPLETIONS:
        return generated_choices(ctx.body)
    if route.api is RouteApi.GEMINI_GENERATE_CONTENT:
        return gemini_api.choices(ctx.body)
    if _other_family(ctx):
        return invoke_bodies.choices(ctx.upstream_model or "", ctx.body)
    return 1


def _apply_hard_cap(ctx: RequestContext, reservation: Reservation) -> None:
    """Cap the completion at what the hard-capped token budgets had left for this request.

    What a budget had left is read from this request's own atomic reservation,
    so concurrent requests each see the budget the earlier ones left them.
    """
    capped = [
        index
        for index, limit in enumerate(reservation.limits)
        if limit.hard_cap and limit.kind == "t" and limit.enforce
    ]
    if not capped or ctx.body is None:
        return
    prompt = fixed_tokens(ctx)
    # Shared by the completions the provider generates: each gets its part of the room.
    choices = _choices(ctx)
    completion = (min(_left_before(reservation, i) for i in capped) - prompt) // choices
    embeddings = ctx.route is not None and ctx.route.api in INPUT_ONLY_APIS
    if completion < _least_completion(ctx):
        store = ctx.runtime.services.quota_store
        assert store is not None
        # The store refuses such a request itself, counting it nowhere (``_capped_room``);
        # this is the safety net should it admit one. Everything goes back, the request
        # too: it never reached the provider, and a refusal by the store counts in no
        # limit either (else each refused retry took one of the subject's
        # requests_per_*). Forgotten first, so that done() cannot give it back twice.
        ctx.reservation = None
        store.release(reservation)
        # Told as the prompt and the room its answer needs, its picture part of that.
        room = _answer_room(ctx)
        now = store.now()
        refusal, limit, _ = _capped_refusal(
            reservation, capped, ctx.estimated_prompt_tokens(), now, room
        )
        # A refusal like the store's: aigw_rate_limited_total counts both.
        ctx.runtime.services.metrics.rate_limit(limit.rule, limit.subject_kind)
        ctx.quota_decision = "rejected"
        ctx.quota_rule = limit.rule
        raise for_client(ctx, refusal, now)
    # Never above what the request reserved: a body that names no allowance gets the
    # default it was reserved with, not the budget's whole remainder, which a provider
    # refuses past the model's output limit (Bedrock: "The maximum tokens you requested
    # exceeds the model limit") and a cut answer would be charged (cut_answer).
    completion = min(completion, reserved_completion(ctx) // choices)
    # An API without an allowance field (a compaction, a prompt of Prompt management)
    # has nothing to lower: it was admitted above only with room for its whole default
    # allowance.
    if ctx.route is not None and ctx.route.api is RouteApi.BEDROCK_CONVERSE:
        prompt_call = converse_api.is_prompt(ctx.upstream_model or "")
        lowered = not prompt_call and converse_api.cap_completion(ctx.body, completion)
        if lowered:
            # Claude's thinking budget (passed on in additionalModelRequestFields) must
            # stay below the maxTokens just lowered: Bedrock refuses it otherwise.
            most = ctx.body["inferenceConfig"]["maxTokens"]
            cap_thinking(converse_fields(ctx.body), most)
    elif ctx.route is not None and ctx.route.api is RouteApi.GEMINI_GENERATE_CONTENT:
        lowered = gemini_api.cap_completion(ctx.body, completion)
    elif _other_family(ctx):
        lowered = invoke_bodies.cap_completion(_invoke_models(ctx), ctx.body, completion)
    else:
        lowered = (
            not embeddings
            and bool(_allowance_fields(ctx))
            and cap_completion(ctx.body, completion, _allowance_field(ctx), _allowance_fields(ctx))
        )
    if ctx.route is not None and ctx.route.api in MESSAGES_BODY_APIS and not _other_family(ctx):
        # A thinking budget must stay below the max_tokens the cap may have lowered.
        lowered = cap_thinking(ctx.body) or lowered
    if lowered:
        ctx.body_changed = True
        ctx.quota_decision = "capped"


# The least completion a hard cap may leave a request, by client API: an embeddings call
# needs room for its input only; a Responses API call 16 tokens, the smallest
# max_output_tokens OpenAI accepts (a lower cap would turn the request into the
# provider's 400 about a field the client never set); a chat call one token.
_LEAST_COMPLETION = {
    RouteApi.OPENAI_EMBEDDINGS: 0,
    RouteApi.RERANK: 0,
    RouteApi.OPENAI_RESPONSES: 16,
}


def _least_completion(ctx: RequestContext) -> int:
    route = ctx.route
    if _other_family(ctx):
        if _embeds(ctx):
            return 0  # room for its input alone, as on /v1/embeddings
        # An InvokeModel body whose allowance the gateway cannot write: as a compaction.
        known = invoke_bodies.allowance_paths(ctx.upstream_model or "") is not None
        return 1 if known else ctx.runtime.config.quotas.default_max_tokens
    if route is not None and route.api in MESSAGES_BODY_APIS and ctx.body is not None:
        # Extended thinking needs room for its least budget (quota.thinking_budget).
        return least_completion(ctx.body)
    if _claude_thinking_budget(ctx) is not None and not takes_adaptive_thinking(
        ctx.upstream_model or ""
    ):
        # So does reasoning_effort translated for a Claude that thinks with a fixed budget:
        # a cap that left less would turn the request into a 400 about a
        # max_completion_tokens the client never set. Adaptive thinking fits any bound.
        return MIN_THINKING_BUDGET + 1
    if route is not None and route.api is RouteApi.OPENAI_RESPONSES_COMPACT:
        # No allowance field to lower: the whole default allowance fits, or a 429.
        return ctx.runtime.config.quotas.default_max_tokens
    if route is not None and route.api is RouteApi.OPENAI_IMAGES and ctx.body is not None:
        # Nothing bounds a picture's tokens: room for all of them, or a 429.
        return picture_allowance(ctx.body)
    if route is not None and route.api is RouteApi.OPENAI_AUDIO:
        # Nothing bounds a transcript, or speech: room for the estimate, or a 429.
        if ctx.form is None and ctx.body is not None:
            return audio_allowance(ctx.body, ctx.model or "", ctx.upstream_model or "")
        return transcript_allowance(ctx.form)
    if route is not None and route.api is RouteApi.BEDROCK_CONVERSE:
        if converse_api.is_prompt(ctx.upstream_model or ""):
            # A prompt of Prompt management takes no inferenceConfig (Bedrock refuses
            # it): likewise.
            return ctx.runtime.config.quotas.default_max_tokens
        if ctx.body is not None:
            # Claude's thinking asked in additionalModelRequestFields: room for its least
            # budget, as on the Messages API.
            return least_completion(converse_fields(ctx.body))
    return _LEAST_COMPLETION.get(route.api, 1) if route is not None else 1


def _other_family(ctx: RequestContext) -> bool:
    """Whether the request is an InvokeModel call with another family's body than
    Claude's (``bedrock_invoke_bodies``)."""
    route = ctx.route
    return (
        route is not None
        and route.api is RouteApi.BEDROCK_INVOKE
        and ctx.body is not None
        and not reads_as_claude(ctx.upstream_model or "", ctx.body)
    )


def _embeds(ctx: RequestContext) -> bool:
    """Whether the InvokeModel call goes to an embeddings model (configured so, or named
    so by its model id)."""
    return invoke_bodies.invokes_embeddings(ctx)


def _store_refusal(
    ctx: RequestContext, denial: Denial, cost: int, now: float
) -> tuple[RateLimitError, Limit]:
    """The 429 for the store's refusal, and the limit it names.

    A prompt that a hard-capped budget could not take even empty gets the "prompt too
    large" refusal with no ``retry-after``, as when the store admits it and the hard cap
    refuses it (``_capped_refusal``): told to wait for the period's end, or for another
    limit's window (a minute's requests) when that budget had room, its client came back
    then to be refused for good. Of the rest, the refusal that lasts longest for this
    prompt: a held budget that would still leave it too little room once the running
    requests settle refuses as spent, and so does a hard-capped budget that had room,
    but not enough for this prompt, until its period ends."""
    if not cost:  # a count: no prompt to weigh
        return _refusal(denial, now), denial.limit
    prompt = ctx.estimated_prompt_tokens()
    room = _answer_room(ctx)
    if denial.too_short:
        # The hard cap's refusal, told as when the store admitted the request and the
        # cap refused it after (``_apply_hard_cap``): that is how it was refused before
        # the store weighed the prompt itself, counting it in the subject's limits.
        budgets = list(denial.with_room)
        capped, limit, _ = _capped_refusal(
            _as_reservation(budgets), list(range(len(budgets))), prompt, now, room
        )
        return capped, limit
    refusals = denial.refusals or (denial,)
    budgets = [
        each
        for each in (*refusals, *denial.with_room)
        if each.limit.hard_cap and each.limit.kind == "t"
    ]
    never = [each for each in budgets if each.effective_limit - prompt < room]
    if never:
        worst = min(never, key=lambda each: each.effective_limit)
        left = max(0, worst.effective_limit - worst.used)
        refusal = _too_large(worst.limit, worst.effective_limit, left, prompt, now, room)
        return refusal, worst.limit
    # A capped reservation fills its budget to the token, so this is how a hard-capped
    # budget usually refuses. Told to retry in seconds, the client came back after the
    # running requests settled, to be refused until the period's end: settling only adds
    # to what is spent.
    chosen, wait = denial, _prompt_wait(ctx, denial, now)
    for each in refusals:
        # On a tie, the store's choice (the one that resets last) stands.
        if (each_wait := _prompt_wait(ctx, each, now)) > wait:
            chosen, wait = each, each_wait
    refusal = _refusal(chosen, now, spent=_spent_for_this_prompt(ctx, chosen))
    short = [each for each in denial.with_room if each.effective_limit - each.used - prompt < room]
    if short:
        # As the hard cap would refuse this prompt once the other limits let it through:
        # told first, when it lasts longer, the client is not sent back to meet it.
        state = _as_reservation(short)
        capped, limit, capped_wait = _capped_refusal(
            state, list(range(len(short))), prompt, now, room
        )
        if capped_wait > wait:
            return capped, limit
    return refusal, chosen.limit


def _prompt_wait(ctx: RequestContext, denial: Denial, now: float) -> float:
    """How long ``denial`` refuses this request: a held budget that would leave this
    prompt too little room once the running requests settle, until its window resets."""
    held = denial.only_held and not _spent_for_this_prompt(ctx, denial)
    return refusal_wait(denial.limit, now, held=held)


def _as_reservation(budgets: list[Denial]) -> Reservation:
    """Budgets the store did not reserve on, as they stood before this request: what
    ``_capped_refusal`` reads of a reservation (nothing reserved, nothing held by it)."""
    none = [0] * len(budgets)
    return Reservation(
        [each.limit for each in budgets],
        none,
        [each.used for each in budgets],
        [each.effective_limit for each in budgets],
        none,
        held=[each.held for each in budgets],
    )


def _spent_for_this_prompt(ctx: RequestContext, denial: Denial) -> bool:
    """Whether a hard-capped budget that running requests hold leaves this prompt too
    little room even once they settle (as ``_capped_refusal`` tells held from spent)."""
    if not (denial.only_held and denial.limit.hard_cap):
        return False
    room = _answer_room(ctx)
    return denial.effective_limit - denial.settled - ctx.estimated_prompt_tokens() < room


def _left_before(reservation: Reservation, index: int) -> int:
    """What limit ``index`` had left for this request, before it reserved."""
    return reservation.effective[index] - (reservation.used[index] - reservation.reserved[index])


def _allowance_field(ctx: RequestContext) -> str:
    """The completion allowance a capped body gets when it names none, in its API."""
    route = ctx.route
    if route is not None and (route.api in ANTHROPIC_APIS or route.api in MESSAGES_BODY_APIS):
        return "max_tokens"
    if route is not None and route.api is RouteApi.OPENAI_RESPONSES:
        return "max_output_tokens"
    if route is not None and route.api is RouteApi.OPENAI_COMPLETIONS:
        return "max_tokens"  # the completions API has no other
    return "max_completion_tokens"


def _allowance_fields(ctx: RequestContext) -> tuple[str, ...]:
    """Where a body of the request's API bounds its completion: the Responses API reads
    ``max_output_tokens`` alone (a ``max_tokens`` there is no allowance of its), text
    completions ``max_tokens`` alone."""
    route = ctx.route
    if route is not None and route.api is RouteApi.OPENAI_RESPONSES:
        return RESPONSES_ALLOWANCE_FIELDS
    if route is not None and route.api is RouteApi.OPENAI_RESPONSES_COMPACT:
        return ()  # none: a compaction reserves quotas.default_max_tokens
    if route is not None and route.api is RouteApi.OPENAI_COMPLETIONS:
        return COMPLETIONS_ALLOWANCE_FIELDS
    if route is not None and route.api is RouteApi.OPENAI_IMAGES:
        return ()  # none: a picture's tokens are its quality's and size's
    if route is not None and route.api is RouteApi.OPENAI_AUDIO:
        return ()  # none: a transcript is as long as the audio's speech
    return CHAT_ALLOWANCE_FIELDS


def _capped_refusal(
    reservation: Reservation, capped: list[int], prompt: int, now: float, room: int = 1
) -> tuple[RateLimitError, Limit, float]:
    """The 429 for a prompt that a hard-capped budget cannot take, the limit it names,
    and how long it holds.

    A budget that has too little left says when it resets (``retry-after``),
    like any other refusal. A prompt that leaves a whole budget less than ``room``
    for the answer would be refused after every reset: it gets no ``retry-after``,
    which would promise otherwise. A budget whose settled usage leaves room for the
    prompt, short only of what running requests hold, is a short retryable wait, as
    the store's own refusal of such a budget (``_held_refusal``).
    """
    never = [i for i in capped if reservation.effective[i] - prompt < room]
    held: set[int] = set()
    if never:
        index = min(never, key=lambda i: _left_before(reservation, i))
    else:
        short = [i for i in capped if _left_before(reservation, i) - prompt < room] or capped
        # Running requests hold what this prompt lacks: their settlements free what they
        # did not use. Refused until the period's end (x-should-retry: false on a
        # month), a client gave up on a request that would pass seconds later.
        held = {
            i
            for i in short
            if reservation.effective[i] - reservation.settled_before(i) - prompt >= room
        }
        # Of the budgets too low for this prompt, the one that holds longest, as the
        # store's refusals name (refusal_order): naming the one with the fewest tokens
        # left (a minute's) sent the client back before a day's budget, just as short
        # of it, had reset, to be refused again; and one spent for the day before one
        # that running requests hold for the month.
        index = max(
            short,
            key=lambda i: (
                refusal_wait(reservation.limits[i], now, held=i in held),
                _holds_until(reservation.limits[i]),
                -i,
            ),
        )
    limit, effective = reservation.limits[index], reservation.effective[index]
    left = max(0, _left_before(reservation, index))
    subject = f"{_subject_text(limit)} (rule '{limit.rule}')"
    if index in held:
        wait = refusal_wait(limit, now, held=True)
        message = (
            f"Token budget of {subject} held by running requests: {left} tokens left, not"
            f" enough for this prompt, and requests still running hold"
            f" {reservation.held_before(index)} tokens reserved for their answers;"
            f" {_try_again(wait)}"
        )
        headers = _held_headers(limit, effective, left, wait, now)
        return RateLimitError(message, code="rate_limit_exceeded", headers=headers), limit, wait
    if never:
        return _too_large(limit, effective, left, prompt, now, room), limit, math.inf
    message = (
        f"Token budget nearly used for {subject}: {left} tokens left, not enough for"
        f" this prompt; {_reset_text(limit)}"
    )
    headers = _limit_headers(limit, effective, left, now)
    error = RateLimitError(message, code="insufficient_quota", headers=headers)
    return error, limit, refusal_wait(limit, now, held=False)


def _too_large(
    limit: Limit, effective: int, left: int, prompt: int, now: float, room: int = 1
) -> RateLimitError:
    """The 429 for a prompt that leaves a whole hard-capped budget no room for an answer:
    it would be refused after every reset, so it has no ``retry-after``, which would
    promise otherwise. A prompt that would leave room for a token, refused for the more
    its answer needs at the least (``room``: a thinking budget, 16 on the Responses API,
    the whole default for an answer no field bounds), is told so: "3 prompt tokens leave
    no room for an answer" read as nonsense beside a 200-token budget."""
    subject = f"{_subject_text(limit)} (rule '{limit.rule}')"
    if effective - prompt >= 1 and room > 1:
        message = (
            f"Request too large for the token budget of {subject}: about {prompt} prompt"
            f" tokens and the {room} tokens its answer needs at the least do not fit in"
            f" {limit.describe(effective)}"
        )
    else:
        message = (
            f"Prompt too large for the token budget of {subject}: about {prompt} prompt"
            f" tokens leave no room for an answer in {limit.describe(effective)}"
        )
    headers = _limit_headers(limit, effective, left, now, retry=False)
    return RateLimitError(message, code="insufficient_quota", headers=headers)


def for_client(ctx: RequestContext, refusal: RateLimitError, now: float) -> GatewayError:
    """The refusal as the client's SDK should act on it (``ServiceQuotaExceededError``).
    To an AWS SDK (Bedrock's routes), one that no retry within ``RETRY_WITHIN_S`` can
    pass (``x-should-retry: false``) is Bedrock's ``ServiceQuotaExceededException``: as a
    ``ThrottlingException`` boto3 retried it two to four times, each refused again, and
    its adaptive mode slowed down every later call. To a Gemini client, one that no wait
    can help (no ``retry-after``) is ``FAILED_PRECONDITION``: Gemini CLI retried a 429
    without a ``RetryInfo`` as a short rate limit. A refusal that resets keeps its 429
    (``RetryInfo`` with the wait: Gemini CLI gives up when it is long). To an Anthropic
    client, its limit under Anthropic's names too (``anthropic-ratelimit-*``), which the
    anthropic SDKs and Claude Code read where OpenAI's clients read ``x-ratelimit-*``."""
    shape = ctx.error_shape
    if shape == "anthropic":
        refusal.headers.update(anthropic_rate_limit_headers(refusal.headers, now))
    if (shape == "bedrock" and refusal.headers.get("x-should-retry") == "false") or (
        shape == "google" and "retry-after" not in refusal.headers
    ):
        return ServiceQuotaExceededError(
            refusal.message, code=refusal.code, headers=refusal.headers
        )
    return refusal


def _holds_until(limit: Limit) -> float:
    end = limit.window.end
    return math.inf if end is None else end


def _subject_text(limit: Limit) -> str:
    return f"{limit.subject_kind.replace('header:', 'header ')} '{limit.subject}'"


def _reset_text(limit: Limit) -> str:
    reset = limit.reset_time()
    return "it does not reset" if reset is None else f"it resets at {reset}"


def _limit_headers(
    limit: Limit, effective: int, remaining: int, now: float, *, retry: bool = True
) -> dict[str, str]:
    """A refusal's headers: OpenAI's ``x-ratelimit-*`` for the limit that refused, and
    ``retry-after`` (whole seconds until it resets) when waiting can help; and
    ``x-should-retry: false`` unless it helps within ``RETRY_WITHIN_S``, so that no SDK
    retries on its own what a retry a few seconds later cannot pass, nor hangs for hours."""
    # OpenAI's headers name requests and tokens: a cost budget has none of its own, and
    # its refusal says when it resets by retry-after alone.
    unit = {"r": "requests", "t": "tokens"}.get(limit.kind)
    headers = {}
    if unit is not None:
        headers[f"x-ratelimit-limit-{unit}"] = str(effective)
        headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, remaining))
    left = _whole_seconds_left(limit, now)
    if left is not None:
        # A window that ended while the store was asked still refused this request:
        # the client waits a second, and both headers say so (not `0s` beside `1`).
        left = max(1, left)
        if unit is not None:
            headers[f"x-ratelimit-reset-{unit}"] = openai_duration(left)
        if retry:
            headers["retry-after"] = str(left)
    if left is None or not retry or left > RETRY_WITHIN_S:
        headers["x-should-retry"] = "false"
    return headers


def _refusal(denial: Denial, now: float, *, spent: bool = False) -> RateLimitError:
    """The 429 for the limit the store refused with: a short wait when running requests
    hold what it lacks (unless ``spent``: this prompt would not fit once they settle),
    else until its window resets."""
    limit = denial.limit
    if denial.only_held and not spent:
        return _held_refusal(denial, now)
    message = (
        f"Rate limit reached for {_subject_text(limit)} (rule '{limit.rule}'): "
        f"{limit.describe(denial.effective_limit)}, {_used_text(denial)}; {_reset_text(limit)}"
    )
    headers = _limit_headers(limit, denial.effective_limit, 0, now)
    code = "insufficient_quota" if limit.is_quota else "rate_limit_exceeded"
    return RateLimitError(message, code=code, headers=headers)


def _used_text(denial: Denial) -> str:
    """A spent limit's usage as ``extproc quota get`` and the gauges tell it: what the
    settled requests used, and apart what running requests hold. The counter's sum read
    "100312 used" where the operator's tools said 100100 used and 212 reserved."""
    # Never more than the counter holds (an operator's grant can take it below).
    held = min(denial.held, denial.used)
    text = denial.limit.amount_text
    if held > 0:
        return f"{text(denial.settled)} used and {text(held)} held by running requests"
    return f"{text(denial.used)} used"


def _held_refusal(denial: Denial, now: float) -> RateLimitError:
    """The 429 for a token budget that requests still running hold: what they reserved
    (their estimates, ``max_tokens`` whole) fills it, but what is spent does not. Their
    settlements free what they did not use within seconds to minutes, so the client is
    asked to try again shortly, and its SDK does on its own (no ``x-should-retry:
    false``), where the budget's own refusal (spent until its window resets) would send it
    away until the end of the month."""
    limit = denial.limit
    wait = denial.wait(now)
    text = limit.amount_text
    held = f"{denial.held} tokens" if limit.kind == "t" else text(denial.held)
    budget = "Token budget" if limit.kind == "t" else "Cost budget"
    message = (
        f"{budget} of {_subject_text(limit)} (rule '{limit.rule}') held by running"
        f" requests: {limit.describe(denial.effective_limit)}, {text(denial.settled)} used,"
        f" and requests still running hold the rest ({held} reserved for"
        f" their answers); {_try_again(wait)}"
    )
    headers = _held_headers(limit, denial.effective_limit, 0, wait, now)
    return RateLimitError(message, code="rate_limit_exceeded", headers=headers)


def _try_again(wait: float) -> str:
    """When a held refusal says to try again: its ``retry-after`` (``_held_headers``). "In
    a few seconds" was right of the default 5 s, not of a rule's 45 s (a person retrying
    when told came back to the same refusal)."""
    seconds = max(1, math.ceil(wait))
    return f"try again in {seconds} second{'' if seconds == 1 else 's'}, as they finish"


def _held_headers(
    limit: Limit, effective: int, remaining: int, wait: float, now: float
) -> dict[str, str]:
    """A held budget's refusal headers: ``retry-after`` the short ``wait`` and no
    ``x-should-retry``, so that SDKs wait and retry on their own."""
    headers = _limit_headers(limit, effective, remaining, now)
    retry = max(1, math.ceil(wait))
    headers["retry-after"] = str(retry)
    # When tokens may be free again, as `retry-after` says: the window's own reset is
    # no later than that for a client, and a client pacing itself by these headers
    # alone (no `retry-after`) would otherwise wait until the month's end. A lifetime
    # quota's window never resets, and its held refusal had no reset header at all.
    if limit.kind == "t":
        headers["x-ratelimit-reset-tokens"] = openai_duration(retry)
    headers.pop("x-should-retry", None)
    return headers


def rate_limit_headers(reservation: Reservation, now: float) -> dict[str, str]:
    """An admitted request's ``x-ratelimit-*``: of its request limits, and apart of its
    token limits, the one with the fewest left, as the client's next request meets it.

    A limit whose window ended by ``now`` (a token quota's period the request started in,
    or a minute that ended during the store's round trip) counted this request in that
    window, which has reset: the next request counts in the window that holds ``now``,
    so its reset and what it has left are that window's. Nothing of it is this request's,
    and the gateway read nothing of it, so it shows its whole limit. Before, such a limit
    said ``reset 0s`` ("reset now", again on every such answer) beside the ended window's
    remaining, which a client pacing itself by these headers read as spent until then."""
    headers: dict[str, str] = {}
    used = [
        0 if limit.ended(now) else count
        for limit, count in zip(reservation.limits, reservation.used, strict=True)
    ]
    for kind, unit in (("r", "requests"), ("t", "tokens")):
        index = tightest(reservation.limits, used, reservation.effective, kind)
        if index is None:
            continue
        limit = reservation.limits[index]
        effective = reservation.effective[index]
        headers[f"x-ratelimit-limit-{unit}"] = str(effective)
        headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, effective - used[index]))
        left = limit.window_at(now).seconds_left(now)
        if left is not None:
            # At least 1: a window holding ``now`` has not ended (``0s`` reads "reset now").
            headers[f"x-ratelimit-reset-{unit}"] = openai_duration(max(1, math.ceil(left)))
    return headers


def _whole_seconds_left(limit: Limit, now: float) -> int | None:
    """Seconds until the limit's window resets, rounded up; None: it never resets."""
    left = limit.window.seconds_left(now)
    return None if left is None else max(0, math.ceil(left))


def openai_duration(seconds: int) -> str:
    """Seconds as OpenAI writes its ``x-ratelimit-reset-*`` values: ``1s``, ``6m0s``,
    ``13h2m5s`` (Go's duration text, hours being the largest unit).

    Clients written against OpenAI read these, so a month's quota says ``650h0m0s``
    as OpenAI would, not ``2340000s``."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"

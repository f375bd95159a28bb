"""After the response: the cost, the log line, the metrics and the usage rollup, once per request.

Runs in the processor's ``done`` step, after Envoy has its last answer. The rollup goes
to the batching ``UsageWriter``, so no request waits on the store; a store
failure is counted, retried and never reaches the client.

A failover attempt cut after its provider started answering (``ctx.cut_attempts``) is a
call its provider billed: the token and cost counters and the rollup count it under its
own provider (and the model the client asked for, as the answer is counted), beside the
answer; the log line adds it to its totals (``access_log``).
"""

from __future__ import annotations

from extproc.answer_status import no_answer
from extproc.chargeback.pricing import Cost, request_cost
from extproc.context import (
    IMAGE_GENERATION_COUNTS,
    CutAttempt,
    RequestContext,
    Usage,
    image_generation_counts,
)
from extproc.credential_cleaner import echoed_credential
from extproc.model_groups import fails_provider
from extproc.store.usage import UsageEntry
from extproc.telemetry.access_log import access_record
from extproc.telemetry.span_attributes import operation_of
from extproc.translators.answer_errors import ProviderAnswerError
from extproc.translators.base import stream_failure
from extproc.translators.unreadable_answers import UnreadableAnswerError, unusable_answer

# The status_code of aigw_upstream_errors_total for a provider's error inside a stream,
# and for a success answer whose body was the provider's error.
STREAM_ERROR_STATUS = "stream_error"
ERROR_BODY_STATUS = "error_body"


class AccountingStage:
    def done(self, ctx: RequestContext) -> None:
        if ctx.route is None:
            return  # not AI traffic: Envoy's own access log covers it
        services = ctx.runtime.services
        # Priced once: the log line, the counter and the rollup carry the same cost.
        cost = request_cost(ctx)
        record = access_record(ctx)
        try:
            self._observe(ctx)
            # The rollup counts requests that reached a provider; refusals (401, 429, ...)
            # are in the log line and in aigw_requests_total, and cost nothing.
            # A response guard's refusal comes after the provider answered: its usage
            # counts. So does a provider's error inside a stream (estimated): part of it
            # was delivered. A success answer that was the provider's error is counted as
            # its error status would have been: a request that reached it, at the tokens
            # it billed; so is a stream its provider failed before it began its answer
            # (an empty text-to-speech event stream, an error as the first event), the
            # streamed form of an error status, at no tokens.
            reached_provider = ctx.provider is not None and (
                ctx.error is None
                or ctx.usage_reported
                or ctx.usage_estimated
                or unusable_answer(ctx.error)
                or (ctx.stream and stream_failure(ctx.translator) is not None)
            )
            if ctx.accounted and reached_provider and services.usage_writer is not None:
                services.usage_writer.add(self._entry(ctx, cost, record["latency_ms"]))
            if ctx.cut_attempts:
                self._charge_cut_attempts(ctx)
        finally:
            # Last, so that a request whose line is out is counted everywhere else: the
            # writer thread may write a line the moment it is queued. Before, a scrape
            # could find a line whose tokens the page did not count yet.
            services.access_log.write(record, echoed_credential(ctx))

    @staticmethod
    def _observe(ctx: RequestContext) -> None:
        metrics = ctx.runtime.services.metrics
        model = ctx.asked_model or ""
        provider = ctx.provider or ""
        # Time to first token: streams only (a buffered answer's first chunk is all of
        # it), answers only (an error's body is no token): the log line's.
        ttft = ctx.time_to_first_token_s() if ctx.accounted else None
        status = "aborted" if ctx.aborted else str(ctx.response_status)
        failed_in_200 = _failed_in_success(ctx)
        upstream_side = ctx.error is None or isinstance(ctx.error, UnreadableAnswerError)
        if upstream_side and ctx.provider is not None and no_answer(ctx.response_status):
            # The upstream side's own status (Anthropic's 529, not the client's 503); the
            # client's, for an answer the gateway could not translate (its 200 is no error).
            # Also when the client left before the error's body came: the provider's error
            # happened all the same, and this counter tells upstream errors by their status
            # (aigw_requests_total, which counts the client's side, says ``aborted``).
            upstream = ctx.upstream_status or 0
            label = str(upstream if no_answer(upstream) else ctx.response_status)
            metrics.upstream_error(provider=provider, model=model, status=label)
            if fails_provider(int(label)):
                # A model group passes its members on this provider over for a while
                # (extproc.model_groups).
                ctx.runtime.services.balancer.provider_failed(provider)
        elif (failure := _provider_failure(ctx)) is not None:
            metrics.upstream_error(provider=provider, model=model, status=failure)
        identity = ctx.identity
        usage = ctx.usage
        cost = ctx.cost
        metrics.record_finished(
            route=ctx.route.name if ctx.route else "",
            provider=provider,
            model=model,
            # A success status the provider's failure came inside (a stream it cut with an
            # error event, a 200 whose body was its error) is a failed request to the
            # client: counted as "200" it escaped the error-rate alert, which selects
            # statuses. Labelled instead, once, as aigw_upstream_errors_total labels it.
            status=failed_in_200 if failed_in_200 and not ctx.aborted else status,
            duration_s=ctx.elapsed_ms() / 1000.0 if ctx.accounted else None,
            ttft_s=ttft,
            identity=(identity.api_key_id or "", identity.user_id or "", identity.group_id or ""),
            usage=(
                operation_of(ctx) or "chat",
                ctx.provider_type.value if ctx.provider_type else provider,
                ctx.response_model or "",
                usage.prompt_tokens,
                usage.completion_tokens,
            )
            if ctx.usage_reported or ctx.usage_estimated
            else None,
            picousd=cost.picousd if cost is not None else 0,
            parts=token_parts(usage),
            # A rerank's searches, when its provider bills them: the log line's.
            search_units=usage.search_units or 0,
        )

    @staticmethod
    def _charge_cut_attempts(ctx: RequestContext) -> None:
        """Each cut attempt in the metrics and the rollup, under its provider."""
        services = ctx.runtime.services
        metrics = services.metrics
        identity = (
            ctx.identity.api_key_id or "",
            ctx.identity.user_id or "",
            ctx.identity.group_id or "",
        )
        model = ctx.asked_model or ""
        # Not in gen_ai_client_token_usage: one observation per request, the answer's
        # (docs/metrics.md); the counters below are the ledger.
        for attempt in ctx.cut_attempts:
            usage = attempt.usage
            metrics.count_tokens(
                identity=identity,
                model=model,
                provider=attempt.provider,
                prompt=usage.prompt_tokens,
                completion=usage.completion_tokens,
                parts=token_parts(usage),
            )
            if attempt.cost.picousd:
                metrics.count_cost(
                    identity=identity,
                    model=model,
                    provider=attempt.provider,
                    picousd=attempt.cost.picousd,
                )
            if ctx.accounted and services.usage_writer is not None:
                services.usage_writer.add(_cut_entry(ctx, attempt))

    @staticmethod
    def _entry(ctx: RequestContext, cost: Cost, latency_ms: float) -> UsageEntry:
        return UsageEntry(
            started_at=ctx.started_wall,
            dimensions=_dimensions(ctx, ctx.provider or ""),
            prompt_tokens=ctx.usage.prompt_tokens,
            completion_tokens=ctx.usage.completion_tokens,
            cached_tokens=ctx.usage.cached_tokens,
            cost_picousd=cost.picousd,
            priced=cost.priced,
            latency_ms=latency_ms,
            # The log line's counts as they are, so that the report sums to the lines.
            cache_write_tokens=ctx.usage.cache_write_tokens,
            cache_write_1h_tokens=ctx.usage.cache_write_1h_tokens,
            server_tool_requests=ctx.usage.server_tool_requests,
            prompt_audio_tokens=ctx.usage.audio_tokens,
            cached_audio_tokens=ctx.usage.cached_audio_tokens,
            completion_audio_tokens=ctx.usage.audio_output_tokens,
            completion_image_tokens=ctx.usage.image_output_tokens,
            prompt_image_tokens=ctx.usage.image_tokens,
            image_generation=_image_generation(ctx.usage),
            # A rerank's searches, when its provider bills them (the line's null: 0).
            search_units=ctx.usage.search_units or 0,
        )


def token_parts(usage: Usage) -> dict[str, int]:
    """A request's counts that aigw_token_parts_total counts (its ``TOKEN_PARTS``), the
    log line's and the rollup's: before, the metric had the prompt and completion alone,
    and a dashboard could show neither the cache's share nor what audio cost."""
    parts = {
        "cached": usage.cached_tokens,
        "cache_write": usage.cache_write_tokens,
        "cache_write_1h": usage.cache_write_1h_tokens,
        "prompt_audio": usage.audio_tokens,
        "cached_audio": usage.cached_audio_tokens,
        "completion_audio": usage.audio_output_tokens,
        "completion_image": usage.image_output_tokens,
        "prompt_image": usage.image_tokens,
    }
    generation = usage.image_generation
    if generation is None:
        # Most requests: zeros kept once, not a dict of the tool's counts renamed per request.
        parts.update(_NO_IMAGE_GENERATION_PARTS)
    else:
        counts = image_generation_counts(generation).values()
        parts.update(zip(_IMAGE_GENERATION_PARTS, counts, strict=True))
    return parts


# The image generation tool's pictures as parts: ``image_generation_input_tokens`` as
# ``image_generation_input``, and so on.
_IMAGE_GENERATION_PARTS = tuple(name.removesuffix("_tokens") for name in IMAGE_GENERATION_COUNTS)
_NO_IMAGE_GENERATION_PARTS = dict.fromkeys(_IMAGE_GENERATION_PARTS, 0)


def _image_generation(usage: Usage) -> tuple[int, ...] | None:
    """The rollup's image generation counts of ``usage`` (``store.usage``)."""
    if usage.image_generation is None:
        return None
    return tuple(image_generation_counts(usage.image_generation).values())


def _provider_failure(ctx: RequestContext) -> str | None:
    """The label of a provider failure that no status tells: an error inside a stream
    whose status had left, or a success answer whose body was the provider's error."""
    if ctx.stream and stream_failure(ctx.translator) is not None:
        return STREAM_ERROR_STATUS
    if isinstance(ctx.error, ProviderAnswerError):
        return ERROR_BODY_STATUS
    return None


def _failed_in_success(ctx: RequestContext) -> str | None:
    """``_provider_failure`` where the client got a success status; None where its status
    (a 5xx the gateway made of it, say) already tells, or where a response guard's
    refusal was the last the client read: the provider failing the stream after it
    (``stages.response``) reached no client, and the refusal, a decision and no
    failure, is counted under its status as the log line says ``rejected``."""
    if not 200 <= ctx.response_status < 300 or ctx.stream_refusal is not None:
        return None
    return _provider_failure(ctx)


def _cut_entry(ctx: RequestContext, attempt: CutAttempt) -> UsageEntry:
    """A cut attempt's rollup entry: a request its provider billed, in no latency bucket
    (the client waited for the request, not for this attempt)."""
    return UsageEntry(
        started_at=ctx.started_wall,
        dimensions=_dimensions(ctx, attempt.provider),
        prompt_tokens=attempt.usage.prompt_tokens,
        completion_tokens=attempt.usage.completion_tokens,
        cost_picousd=attempt.cost.picousd,
        priced=attempt.cost.priced,
    )


def _dimensions(ctx: RequestContext, provider: str) -> dict[str, str]:
    """The rollup dimensions of the request's usage that ``provider`` billed."""
    return {
        "route": ctx.route.name if ctx.route else "",
        "model": ctx.asked_model or "",
        "provider": provider,
        "api_key_id": ctx.identity.api_key_id or "",
        "user_id": ctx.identity.user_id or "",
        "group_id": ctx.identity.group_id or "",
    }

"""Guardrails and prompt enrichment in the request flow.

``GuardRequestStage`` runs after the body is parsed and the model resolved,
before the quota reservation (a refused prompt reserves nothing) and before
translation (so every provider gets the same checked, enriched prompt). Its
order is fixed: webhooks, then literal/pattern/builtin matchers, then
moderation (cheap local checks before a paid call; the matchers and the
moderation see what a webhook masked), then enrichment (operator text is not
the client's, so it is not checked).

``GuardResponseStage`` runs right after ``ResponseStage`` has translated a
body: buffered answers are checked whole (webhook, then matchers), streamed
ones event by event with ``guardrails.stream``. Only answers with a 2xx status
are guarded; errors pass as they are.

OpenAI text completion routes (``guardrails.completion_text``) guard the prompt's
strings and ``suffix`` (a prompt of token ids is not text, and passes unread), whole
answers' ``choices[].text``, and streams event by event as chat streams are.

Gemini's own API (``guardrails.gemini_text``) guards generateContent and countTokens
requests (a count's ``generateContentRequest`` as the request it wraps), whole answers'
candidates, and streamGenerateContent's events one by one (``guardrails.gemini_stream``),
refusals in Google's shape; enrichment writes Gemini's ``systemInstruction`` and
``contents``.

OpenAI Responses API routes (``guardrails.responses_text``) guard requests and
whole answers; so do its compaction routes (the answer's output: the user messages
kept, and a compaction item whose encrypted content is no text) and its token-count
routes (a request alone: the count's answer holds no text). A Responses stream
repeats its text outside its deltas (in the ``.done`` events and the terminal
response), which the stream guard does not rewrite: a route that guards answers
refuses to stream them (400), rather than send unguarded text.

Answers' reasoning is guarded as their text is, whole and streamed; reasoning a
signature covers (Anthropic's thinking, Converse's reasoning) cannot be masked, so a mask
there refuses the answer (``_unmaskable_refusal``). Sent back in a request, such reasoning is
dropped from a closed turn instead where a mask matches (``Dropper``), and refused in the
open one.
On a route whose guards may change what a client sends back, a request sending thinking
back to a Claude model that binds it to its history asks Claude to drop the thinking that
no longer matches rather than refuse the request (``guardrails.thinking_binding``).

Tool definitions and structured-output schemas are text the model reads too, on every
API (``guardrails.definitions``): read first, as the developer's ``system`` text; a mask
rewrites their free text in place, and refuses where it matched a name (a tool's, a
property's) that something refers to.

Every decision goes into ``ctx.guardrail_decisions`` (the log line's ``guardrails``
field) and ``aigw_guardrail_decisions_total{guard,phase,action}``: the guard's
name, never the text it matched. Routes without policies cost one dict lookup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from extproc.answer_encoding import readable_encoding
from extproc.backends import ANTHROPIC_APIS, openai_metadata_carried
from extproc.bedrock_count_tokens import CONVERSE, counted_request
from extproc.bedrock_invoke_bodies import reads_as_claude
from extproc.config.guard_model import (
    CREDENTIAL_HEADERS,
    EnrichmentConfig,
    FailureMode,
    GuardConfig,
)
from extproc.config.model import (
    GEMINI_APIS,
    MESSAGES_BODY_APIS,
    UNMETERED_APIS,
    RouteApi,
)
from extproc.context import PhaseOutput, RequestContext
from extproc.converse_api import is_prompt
from extproc.errors import BadRequestError, UpstreamError, anthropic_error_body
from extproc.guardrails import definitions
from extproc.guardrails import request_metadata as metadata
from extproc.guardrails.completion_text import answer_slots as completion_answer_slots
from extproc.guardrails.completion_text import request_slots as completion_request_slots
from extproc.guardrails.completion_text import speech_slots
from extproc.guardrails.content import (
    TextSlot,
    anthropic_answer_slots,
    drop_reasoning,
    openai_answer_slots,
    request_slots,
)
from extproc.guardrails.converse_text import answer_slots as converse_answer_slots
from extproc.guardrails.converse_text import drop_reasoning as drop_converse_reasoning
from extproc.guardrails.converse_text import request_slots as converse_request_slots
from extproc.guardrails.embedding_input import input_slots, rerank_slots
from extproc.guardrails.enrichment import enrich, template_values
from extproc.guardrails.framed_stream import ConverseStreamGuard, FramedStreamGuard
from extproc.guardrails.gemini_stream import GeminiStreamGuard
from extproc.guardrails.gemini_text import answer_slots as gemini_answer_slots
from extproc.guardrails.gemini_text import guarded_request as gemini_request
from extproc.guardrails.gemini_text import request_slots as gemini_request_slots
from extproc.guardrails.json_text import decoded
from extproc.guardrails.matching import MatcherGuard, Matchers, apply
from extproc.guardrails.moderated_images import (
    Image,
    chat_images,
    converse_images,
    edit_images,
    gemini_images,
    responses_images,
)
from extproc.guardrails.moderation import OUT_OF_TIME, ModerationError
from extproc.guardrails.policy import GuardrailRejectedError, PhaseGuards, RouteGuards
from extproc.guardrails.responses_text import answer_slots as responses_answer_slots
from extproc.guardrails.responses_text import request_slots as responses_request_slots
from extproc.guardrails.stream import StreamGuard, signed_channel
from extproc.guardrails.structured_output import asks_for_json
from extproc.guardrails.template_inputs import template_slots
from extproc.guardrails.thinking_binding import ask_to_drop_changed_thinking
from extproc.guardrails.webhook import Verdict, WebhookError
from extproc.responses_api import RESPONSES_REQUESTS
from extproc.stages.attempt import serves_request
from extproc.stages.cut_answer import charge_unread_answer

log = logging.getLogger(__name__)

# Of Envoy's wait for a phase's answer (envoy.message_timeout_ms), what the guard calls
# leave to the rest of the phase's work.
_ANSWER_MARGIN_S = 0.1


def _guard_deadline(ctx: RequestContext, *, store_follows: bool) -> float:
    """When this phase's webhook and moderation calls must have answered, on the event
    loop's clock. Envoy answers its own 504 once envoy.message_timeout_ms has passed,
    whatever a guard's failure_mode says: several guards called one after the other (each
    within its own timeout), then the quota's store wait, could add up past it. A call
    still running at the deadline fails as a call past its own timeout does, as its
    guard's failure_mode says. ``store_follows``: the request's phase, whose quota waits
    for the store (store.timeout_ms) after the guards."""
    config = ctx.runtime.config
    budget_ms = config.envoy.message_timeout_ms
    if store_follows:
        budget_ms -= config.store.timeout_ms
    # Counted from the message's arrival: a store wait before the guards in this phase
    # (a stored response's owner looked up, a finished one recorded) took its share.
    spent_s = time.monotonic() - ctx.phase_started if ctx.phase_started else 0.0
    left_s = budget_ms / 1000 - _ANSWER_MARGIN_S - spent_s
    return asyncio.get_running_loop().time() + max(0.0, left_s)


def record(ctx: RequestContext, guard: str, phase: str, action: str) -> None:
    """One guard decision, in the log line and the metric."""
    ctx.guardrail_decisions.append({"guard": guard, "phase": phase, "action": action})
    ctx.runtime.services.metrics.count_guardrail_decision(guard, phase, action)


def _refusal(guard: GuardConfig, found: str) -> GuardrailRejectedError:
    message = guard.message or f"Rejected by guardrail '{guard.name}'{found}"
    return _verdict(message, guard.status)


# The statuses the openai and anthropic SDKs retry on their own (twice by default).
_RETRIED = frozenset({408, 409, 429})


def _verdict(message: str, status: int) -> GuardrailRejectedError:
    """A guard's refusal of this text, with the status it was given. A status SDKs retry
    (a webhook's RejectAction with 503, a guard configured with 429) is kept, as the
    webhook API and the config say, but marked ``x-should-retry: false``: the same text
    meets the same verdict, so each automatic retry only called the webhook again and
    kept the caller waiting for the refusal it already had."""
    headers = {"x-should-retry": "false"} if status in _RETRIED or status >= 500 else None
    return GuardrailRejectedError(message, status, headers=headers)


def _found(found: list[str] | tuple[str, ...]) -> str:
    """A reject guard's refusal names the kinds of data it found, never the text."""
    return f": it contains {', '.join(found)}" if found else ""


# Whose signed reasoning a mask refuses, by phase.
_SIGNED = {"response": "the model's signed reasoning", "request": "signed reasoning sent back"}


def _signed_found(found: list[str] | tuple[str, ...], phase: str) -> str:
    """Why a mask guard refuses signed reasoning: what it found there (never the text)."""
    return _unmaskable_found(found, _SIGNED[phase])


def _unmaskable_found(found: list[str] | tuple[str, ...], where: str) -> str:
    what = f"contains {', '.join(found)}" if found else "holds text to mask"
    return f": {where} {what}, which cannot be masked"


def _unmaskable_refusal(guard: MatcherGuard, text: str, where: str) -> GuardrailRejectedError:
    """A mask guard matched in text that cannot change (signed reasoning it could not
    drop, a tool's name): refused, naming what was found (never the text) and where."""
    return _refusal(guard.config, _unmaskable_found(guard.found(text), where))


# Drops a signed reasoning block (and the reasoning after it) from a request's history
# where the provider allows it: the ids of the blocks dropped, or None where it does not.
Dropper = Callable[[dict[str, Any]], set[int] | None]


def _unavailable(
    ctx: RequestContext,
    guard: GuardConfig,
    phase: str,
    why: str,
    retry_after: int | None = None,
    refusal: GuardrailRejectedError | None = None,
) -> None:
    """A webhook or moderation call failed: pass or refuse, as the guard's endpoint says.

    ``retry_after`` is set when the service refused for its own rate limit (its 429);
    ``refusal``, what the client gets failing closed when the failure is no outage."""
    mode = _failure_mode(ctx, guard)
    log.warning("guardrail %s (%s) failed: %s; %s", guard.name, phase, why, mode)
    if mode is FailureMode.FAIL_OPEN:
        record(ctx, guard.name, phase, "fail_open")
        return
    record(ctx, guard.name, phase, "fail_closed")
    if retry_after is not None:
        raise _rate_limited(guard, retry_after)
    if refusal is not None:
        raise refusal
    raise GuardrailRejectedError(
        f"Guardrail '{guard.name}' is unavailable; try again shortly",
        503,
        code="guardrail_unavailable",
    )


def _cannot_check(ctx: RequestContext, guard: GuardConfig, error: GuardrailRejectedError) -> bool:
    """A guard cannot check this request's input (its webhook or moderation service
    refused it, or it holds an image the service cannot read): ``failure_mode`` decides, as for an
    outage, but a guard failing closed answers a 400 rather than a 503, which SDKs retry
    although the same request meets the same refusal. True when it passes (the caller
    records ``fail_open`` once it has checked what it can)."""
    if _passes_unchecked(ctx, guard, error):
        return True
    record(ctx, guard.name, "request", "fail_closed")
    raise error


def _passes_unchecked(
    ctx: RequestContext, guard: GuardConfig, error: GuardrailRejectedError
) -> bool:
    """Whether ``failure_mode`` lets through what the guard cannot check (``error`` says
    what), logged either way for the operator."""
    mode = _failure_mode(ctx, guard)
    log.warning("guardrail %s (request) cannot check the input: %s; %s", guard.name, error, mode)
    return mode is FailureMode.FAIL_OPEN


def _refused_input(guard: GuardConfig, said: str) -> GuardrailRejectedError:
    return GuardrailRejectedError(
        f"Guardrail '{guard.name}' cannot check this request: its {_service(guard)} "
        f"refused the input ({said}), as it would again",
        400,
        code="guardrail_input_refused",
    )


def _refused_answer(
    guard: GuardConfig, error: WebhookError, *, streamed: bool, shape: str
) -> GuardrailRejectedError | None:
    """A response webhook that refused to read the answer (its 400, 413 or 422: an answer
    too large for it, a shape it does not take); None for any other failure.

    No 400: the answer is the provider's, which the client did not write. Nor the 503
    ``guardrail_unavailable`` of an outage, which the webhook is not in, and which SDKs
    retried twice, each retry an answer generated, charged and most likely refused the
    same way (a model's next answer is as long). A 502, as for an answer the gateway
    cannot read (``encoding_not_guarded``), marked not to be retried; the client may
    still ask again, for a shorter answer. The webhook's body is never quoted: it may
    quote the answer.

    To an AWS SDK (``shape`` bedrock), which reads no ``x-should-retry`` and retries
    every 502 (botocore's transient statuses: twice by default, four times in legacy
    mode), a whole answer refused so is Bedrock's own exception for an answer that could
    not be processed, ``ModelErrorException`` (424), which it does not retry."""
    if error.input_refused is None:
        return None
    what = "rest of the answer" if streamed else "answer"
    return GuardrailRejectedError(
        f"Guardrail '{guard.name}' cannot check the model's answer: its webhook refused to "
        f"read it ({error.input_refused}); the {what} is withheld",
        424 if shape == "bedrock" and not streamed else 502,
        code="guardrail_answer_refused",
        headers={"x-should-retry": "false"},
    )


def _unreadable_image(guard: GuardConfig, what: str) -> GuardrailRejectedError:
    return GuardrailRejectedError(
        f"Guardrail '{guard.name}' cannot check this request: it holds {what}, which its "
        "moderation service cannot read; send the image inline (base64) or by URL",
        400,
        code="guardrail_image_unreadable",
    )


def _too_many_images(guard: GuardConfig, count: int, most: int) -> GuardrailRejectedError:
    return GuardrailRejectedError(
        f"Guardrail '{guard.name}' cannot check this request: it holds {count} images, "
        f"more than the {most} it checks in one request; send fewer",
        400,
        code="guardrail_too_many_images",
    )


def _rate_limited(guard: GuardConfig, retry_after: int) -> GuardrailRejectedError:
    """The guard's service is rate limited: a 429 saying when to retry, as a provider's
    own 429 reaches the client, so SDKs wait and retry rather than report an outage.

    On a stream whose 200 has left, the header cannot go out any more: the error
    event's message says the wait."""
    return GuardrailRejectedError(
        f"Guardrail '{guard.name}' is rate limited by its {_service(guard)}; "
        f"try again in {retry_after} second{'' if retry_after == 1 else 's'}",
        429,
        code="guardrail_rate_limited",
        headers={"retry-after": str(retry_after)},
    )


def _service(guard: GuardConfig) -> str:
    """What the guard asks, as its errors name it."""
    return "webhook" if guard.webhook is not None else "moderation service"


def _failure_mode(ctx: RequestContext, guard: GuardConfig) -> FailureMode:
    config = ctx.runtime.config.guardrails
    if guard.webhook is not None:
        return next(w.failure_mode for w in config.webhooks if w.name == guard.webhook)
    return next(m.failure_mode for m in config.moderation if m.name == guard.moderation)


def _run_matchers(
    ctx: RequestContext,
    phase: str,
    matchers: Matchers,
    slots: list[TextSlot],
    drop: Dropper | None = None,
) -> bool:
    """Mask or reject on every slot; True when some text changed. ``drop``: a request's
    way to go without signed reasoning a mask guard matched in (``_request_slots``)."""
    masked: set[int] = set()
    dropped: set[int] = set()
    removed: set[TextSlot] = set()
    # One search over the texts says which may hold a match. A tool call's JSON, and any
    # text holding a backslash, is read decoded too (an escape may spell what its raw
    # text does not: ``Jos\u00e9``), so it is always scanned.
    maybe = matchers.candidates(["" if slot.is_json else slot.text for slot in slots])
    for index, slot in enumerate(slots):
        if dropped and id(slot.block) in dropped:
            continue  # gone from the history: the provider never reads it
        # Read again, in order, even where nothing is to be found: a tool input's names
        # settle back in their order as the walk reads them (``content._Members``).
        text = slot.text
        if not text or (
            maybe is not None and index not in maybe and not slot.is_json and "\\" not in text
        ):
            continue
        rejecting, hits, spans = matchers.scan(text, json_text=slot.is_json)
        if rejecting is not None:
            for index, guard in enumerate(matchers.guards):
                if index < rejecting:
                    record(ctx, guard.name, phase, "mask" if index in masked else "pass")
            guard = matchers.guards[rejecting]
            record(ctx, guard.name, phase, "reject")
            raise _refusal(guard.config, _found(guard.labels(spans)))
        if hits and slot.removable:
            # An end user's identifier or a cache key: no replacement fits it, so the
            # provider gets the request without it (``request_metadata``).
            slot.remove()
            removed.add(slot)
            masked.update(hit.guard for hit in hits)
            continue
        if hits and (slot.signed or slot.fixed is not None):
            # Signed reasoning cannot be masked: the provider would refuse the block when
            # the client sends it back, that turn and every later one. A request goes
            # without it where the provider allows that; otherwise it is refused. Nor can
            # a name something refers to (a tool's): masked, it would break the tool.
            gone = drop(slot.block) if drop is not None and slot.block is not None else None
            if gone is not None:
                dropped |= gone
                masked.update(hit.guard for hit in hits)
                continue
            index = min(hit.guard for hit in hits)
            for earlier, guard in enumerate(matchers.guards):
                if earlier < index:
                    record(ctx, guard.name, phase, "mask" if earlier in masked else "pass")
            refusing = matchers.guards[index]
            record(ctx, refusing.name, phase, "reject")
            where = slot.fixed if slot.fixed is not None else _SIGNED[phase]
            raise _unmaskable_refusal(refusing, text, where)
        if hits:
            slot.write(apply(text, hits))
            masked.update(hit.guard for hit in hits)
    if dropped or removed:
        # Moderation, after the matchers, reads what the provider gets.
        _forget(slots, dropped, removed)
    for index, guard in enumerate(matchers.guards):
        record(ctx, guard.name, phase, "mask" if index in masked else "pass")
    return bool(masked)


def _forget(slots: list[TextSlot], dropped: set[int], removed: set[TextSlot]) -> None:
    """Take out of ``slots`` the text the request went without: in a signed block it
    dropped (by the block's id) or a field it removed. A later reader (a webhook, the
    matchers, moderation) reads what the provider gets, and never a deleted key."""
    slots[:] = [slot for slot in slots if id(slot.block) not in dropped and slot not in removed]


class GuardRequestStage:
    def request_body(
        self, ctx: RequestContext, out: PhaseOutput, body: bytes
    ) -> Awaitable[None] | None:
        route = ctx.route
        if ctx.body is None or route is None or ctx.upstream is None:
            return None
        if route.api is RouteApi.OPENAI_MODERATIONS:
            # Its input is the text to classify, possibly harmful by design: refused or
            # masked by a guard, it would never be classified as the client asked.
            return None
        guards = ctx.runtime.guardrails.for_route(route.name)
        if guards is None:
            return None
        if route.api in _UNGUARDABLE_STREAMS and ctx.stream and not guards.response.empty:
            raise _unguardable_stream(route.name, route.api)
        if not guards.response.empty:
            asked = _asks_for_logprobs(route.api, ctx.body)
            if asked is not None:
                raise _unguardable_logprobs(route.name, asked)
            if route.api is RouteApi.OPENAI_CHAT and _asks_for_audio(ctx.body):
                raise _unguardable_audio(route.name)
        if route.api in _INVOKE_APIS and not _claude_invoke_body(ctx):
            raise _unreadable_invoke_body(ctx, route.name)
        if guards.enrichment is not None:
            _check_system_enrichment(ctx, route.name, route.api, guards.enrichment)
        if not guards.request.empty:
            # The provider gets the body the guards read, serialised from the parse, never
            # the client's bytes: in a body that repeats a key ("messages" twice) the
            # guards read the parser's choice (the last), and the provider's parser may
            # keep the other, unguarded one.
            ctx.body_changed = True
        if guards.request.waits:
            return self._checked(ctx, guards, out)
        if not guards.request.empty:
            slots, drop = _request_slots(ctx)
            if _run_matchers(ctx, "request", guards.request.matchers, slots, drop):
                ctx.body_changed = True
        _enrich(ctx, guards)
        ask_to_drop_changed_thinking(ctx, guards, out)
        return None

    async def _checked(self, ctx: RequestContext, guards: RouteGuards, out: PhaseOutput) -> None:
        assert ctx.body is not None
        phase = guards.request
        slots, drop = _request_slots(ctx)
        deadline = _guard_deadline(ctx, store_follows=True)
        if await _request_webhooks(ctx, phase, slots, deadline, drop):
            ctx.body_changed = True
        if phase.matchers and _run_matchers(ctx, "request", phase.matchers, slots, drop):
            ctx.body_changed = True
        images: list[Image] | None = None
        for guard, client in phase.moderation:
            # Decoded, as the model reads it: a moderation model need not read a JSON
            # escape (``b\u006fmb``) as its character. Nothing is written back from it.
            roles = client.roles
            texts = [decoded(slot.text) for slot in slots if slot.role in roles and slot.text]
            urls: tuple[str, ...] = ()
            # Set when part of the request passes unchecked (failure_mode allowing it).
            unchecked = False
            # Failing closed, what the guard cannot check refuses the request once the
            # rest is read: a flagged part is the refusal the client learns, not "send
            # the image otherwise" and then, resent so, the real one.
            cannot: GuardrailRejectedError | None = None
            if client.config.reads_images:
                images = _request_images(ctx) if images is None else images
                seen = [image for image in images if image.role in roles]
                unreadable = next((i.unreadable for i in seen if i.unreadable is not None), None)
                if unreadable is not None:
                    # Let through unread, a client could move any image past the guard by
                    # giving it so: it is a request the guard cannot check.
                    error = _unreadable_image(guard, unreadable)
                    unchecked = _passes_unchecked(ctx, guard, error)
                    cannot = None if unchecked else error
                # One call per image: the same image twice (a history sent back) once.
                urls = tuple(dict.fromkeys(i.url for i in seen if i.url is not None))
                most = client.config.max_images
                if len(urls) > most:
                    # The first are checked, the rest pass unread or refuse the request.
                    error = _too_many_images(guard, len(urls), most)
                    if _passes_unchecked(ctx, guard, error):
                        unchecked = True
                    elif cannot is None:
                        cannot = error
                    urls = urls[:most]
            try:
                # Each call ends by the deadline on its own, so that the verdicts given
                # stand (a flagged text beside an image still being fetched); this one
                # is a backstop, within the margin left before Envoy's own 504.
                async with asyncio.timeout_at(deadline + _ANSWER_MARGIN_S / 2):
                    violated = await client.violations(texts, urls, deadline)
            except (ModerationError, TimeoutError) as exc:
                failed = exc if isinstance(exc, ModerationError) else None
                why = OUT_OF_TIME if failed is None else str(failed)
                if cannot is not None:
                    # Refused either way: by what the client can change, below.
                    log.warning("guardrail %s (request) failed: %s", guard.name, why)
                    violated = []
                elif failed is not None and failed.input_refused is not None:
                    _cannot_check(ctx, guard, _refused_input(guard, failed.input_refused))
                    record(ctx, guard.name, "request", "fail_open")
                    continue
                else:
                    wait = None if failed is None else failed.retry_after
                    _unavailable(ctx, guard, "request", why, wait)
                    continue
            if violated:
                record(ctx, guard.name, "request", "reject")
                raise _refusal(guard, f": flagged for {', '.join(violated)}")
            if cannot is not None:
                # Nothing flagged (or nothing more could be read): what the client can
                # change, the part the guard cannot check, is the refusal.
                record(ctx, guard.name, "request", "fail_closed")
                raise cannot
            record(ctx, guard.name, "request", "fail_open" if unchecked else "pass")
        _enrich(ctx, guards)
        ask_to_drop_changed_thinking(ctx, guards, out)


# Streams a route that guards answers refuses, and how the client asks for the answer
# whole instead: a Responses API stream repeats its text outside the deltas a stream
# guard rewrites (the module docstring). Bedrock's framed streams are guarded inside
# their frames (guardrails.framed_stream).
_UNGUARDABLE_STREAMS = {
    RouteApi.OPENAI_RESPONSES: ("a streamed Responses API answer", "send it with stream: false"),
}


def _asks_for_logprobs(api: RouteApi, body: dict[str, Any]) -> str | None:
    """The field by which a request asks for its answer's token log probabilities, which
    carry every token's text (``token``, ``bytes``, ``top_logprobs``; a completion's
    ``tokens``): the answer's text again, outside the fields response guards mask. None
    when it asks for none."""
    if api is RouteApi.OPENAI_CHAT:
        if body.get("logprobs") or body.get("top_logprobs"):
            return "logprobs"
    elif api is RouteApi.OPENAI_COMPLETIONS:
        # logprobs: 0 still returns each sampled token.
        if body.get("logprobs") is not None:
            return "logprobs"
    elif api in RESPONSES_REQUESTS:
        include = body.get("include")
        if isinstance(include, list) and "message.output_text.logprobs" in include:
            return "include"
        if body.get("top_logprobs"):
            return "top_logprobs"
    elif api in GEMINI_APIS:
        config = body.get("generationConfig") or body.get("generation_config")
        if isinstance(config, dict) and (
            config.get("responseLogprobs") or config.get("response_logprobs")
        ):
            return "generationConfig.responseLogprobs"
    return None


def _unguardable_logprobs(route: str, param: str) -> BadRequestError:
    """Log probabilities spell out the answer's text token by token, which response
    guards do not mask: refused before the quota counts the request rather than let the
    masked text through beside the mask."""
    return BadRequestError(
        f"route '{route}' guards answers, which it cannot do for token log probabilities "
        "(they repeat the answer's text); ask without them",
        param=param,
        code="logprobs_not_guarded",
    )


def _asks_for_audio(body: dict[str, Any]) -> bool:
    """Whether a chat request asks for a spoken answer (``modalities`` with ``audio``, or
    ``audio`` output settings): its text is then ``message.audio.transcript`` (the
    content is null) and its ``data`` speaks it, neither of which a guard can mask."""
    modalities = body.get("modalities")
    if isinstance(modalities, list) and "audio" in modalities:
        return True
    return body.get("audio") is not None


def _unguardable_audio(route: str) -> BadRequestError:
    """A spoken answer says the text response guards would mask: refused before the quota
    counts the request, as log probabilities are."""
    return BadRequestError(
        f"route '{route}' guards answers, which it cannot do for audio answers "
        "(their transcript and speech are the answer's text); ask for text",
        param="modalities",
        code="audio_not_guarded",
    )


# The APIs whose body may be an InvokeModel body of any model family.
_INVOKE_APIS = frozenset({RouteApi.BEDROCK_INVOKE, RouteApi.BEDROCK_COUNT_TOKENS})


def _claude_invoke_body(ctx: RequestContext) -> bool:
    """Whether the InvokeModel body the request carries (or counts) is Claude's, the one
    family whose body the guards read; a count's converse member is read too."""
    assert ctx.body is not None and ctx.route is not None
    body = ctx.body
    if ctx.route.api is RouteApi.BEDROCK_COUNT_TOKENS:
        member, body = counted_request(ctx.body)
        if member == CONVERSE:
            return True
    return reads_as_claude(ctx.upstream_model or "", body)


def _unreadable_invoke_body(ctx: RequestContext, route: str) -> BadRequestError:
    """Another family's InvokeModel body on a route with guards or enrichment, which read
    Claude's alone: refused before the quota counts it rather than sent unguarded."""
    return BadRequestError(
        f"route '{route}' guards or enriches requests, which it can do for Claude's "
        f"InvokeModel body only, not for model '{ctx.asked_model}'; call converse for it",
        param="modelId",
        code="body_not_guarded",
    )


# Gemini's field naming a cached context, in both spellings its REST API takes.
_CACHED_CONTENT = ("cachedContent", "cached_content")


def _check_system_enrichment(
    ctx: RequestContext, route: str, api: RouteApi, enrichment: EnrichmentConfig
) -> None:
    """Refuse a request with which its provider takes no system instruction, on a route
    whose enrichment adds one: Gemini's ``cachedContent`` (the cache holds the system
    instruction) and a Bedrock Converse call of a prompt of Prompt management (the prompt
    defines it). The provider refused every such request, after the quota had counted
    it; sent without the route's system message, the client would choose to skip it."""
    if not any(m.role == "system" for m in (*enrichment.prepend, *enrichment.append)):
        return
    assert ctx.body is not None
    if api is RouteApi.BEDROCK_CONVERSE and is_prompt(ctx.upstream_model or ""):
        raise BadRequestError(
            f"route '{route}' adds a system prompt to every request, and Bedrock takes "
            "none with a prompt of Prompt management (its ARN as modelId), whose system "
            "prompt is its own; call a model, or use a route that adds no system prompt",
            param="modelId",
            code="system_enrichment_not_applicable",
        )
    if api in GEMINI_APIS:
        body = gemini_request(ctx.body)
        field = next((name for name in _CACHED_CONTENT if body.get(name)), None)
        if field is not None:
            raise BadRequestError(
                f"route '{route}' adds a system instruction to every request, and Gemini "
                f"takes none with cachedContent, whose system instruction is the cache's; "
                "send the request without cachedContent, or use a route that adds no "
                "system instruction",
                param=field,
                code="system_enrichment_not_applicable",
            )


def _unguardable_stream(route: str, api: RouteApi) -> BadRequestError:
    """A stream the route cannot guard, refused before the quota counts it rather than
    sent unguarded."""
    what, instead = _UNGUARDABLE_STREAMS[api]
    return BadRequestError(
        f"route '{route}' guards answers, which it cannot do for {what}; {instead}",
        param="stream",
        code="stream_not_guarded",
    )


def _unguarded_unasked_stream(route: str, api: RouteApi) -> UpstreamError:
    """The provider streamed an answer the client did not ask to stream, on a route that
    cannot guard such a stream (``_UNGUARDABLE_STREAMS``)."""
    what, _ = _UNGUARDABLE_STREAMS[api]
    return UpstreamError(
        f"the provider streamed the answer although the request did not ask for a stream,"
        f" and route '{route}' guards answers, which it cannot do for {what}",
        code="stream_not_guarded",
    )


def _decoded(ctx: RequestContext, encoding: str) -> bool:
    """Whether the answer's reader gets it uncompressed (``answer_encoding``): gzip and
    deflate are read so when the answer has a reader."""
    return ctx.translator is not None and readable_encoding(encoding)


def _unguarded_encoding(route: str, encoding: str) -> UpstreamError:
    """A success answer compressed in an encoding the gateway cannot read, on a route
    that guards answers."""
    return UpstreamError(
        f"the provider compressed the answer ({encoding}), unasked, in an encoding the "
        f"gateway cannot read, and route '{route}' guards answers, which it cannot do for "
        "text it cannot read",
        code="encoding_not_guarded",
    )


def _request_slots(ctx: RequestContext) -> tuple[list[TextSlot], Dropper | None]:
    """The request's text, its tool definitions and schemas first (where the providers put
    them, before the conversation), and how it goes without signed reasoning a mask
    matched in (None: it carries none)."""
    assert ctx.body is not None and ctx.route is not None
    body = ctx.body
    api = ctx.route.api
    if api is RouteApi.OPENAI_EMBEDDINGS:
        return metadata.openai_carried_slots(body, _carried(ctx)) + input_slots(body), None
    if api is RouteApi.RERANK:
        return metadata.openai_slots(body) + rerank_slots(body), None
    if api in RESPONSES_REQUESTS:
        found = metadata.openai_slots(body) + definitions.responses_slots(body)
        return found + responses_request_slots(body), None
    if api is RouteApi.OPENAI_AUDIO and ctx.form is None:
        # Text to speech (JSON; the other audio requests are forms): what it reads aloud.
        return metadata.openai_slots(body) + speech_slots(body), None
    if api in (RouteApi.OPENAI_COMPLETIONS, RouteApi.OPENAI_IMAGES, RouteApi.OPENAI_AUDIO):
        # An image generation's text is its ``prompt`` string, as a text completion's; so
        # is a transcription's or translation's (the text that guides the model).
        return metadata.openai_slots(body) + completion_request_slots(body), None
    if api in GEMINI_APIS:
        # A count's text reaches the model as the request it counts would.
        request = gemini_request(body)
        found = metadata.gemini_slots(request) + definitions.gemini_slots(request)
        return found + gemini_request_slots(body), None
    converse = api is RouteApi.BEDROCK_CONVERSE
    # Claude's bodies (Messages, token counts, InvokeModel) or OpenAI chat's.
    claude = api in MESSAGES_BODY_APIS or api in ANTHROPIC_APIS
    if api is RouteApi.BEDROCK_COUNT_TOKENS:
        # The counted request's text reaches the provider as the request's would; an
        # InvokeModel body read here is Claude's (``_claude_invoke_body``).
        member, body = counted_request(ctx.body)
        converse = member == CONVERSE
        claude = not converse
    if converse:
        counted = body
        found = metadata.converse_slots(body) + definitions.converse_slots(body)
        found += converse_request_slots(body)
        return found, lambda block: drop_converse_reasoning(counted, block)
    messages = body
    if claude:
        stored = metadata.anthropic_slots(body)
    else:
        # What vLLM's chat template reads beside the messages (RAG documents...).
        stored = metadata.openai_carried_slots(body, _carried(ctx)) + template_slots(body)
    found = stored + definitions.chat_slots(body) + request_slots(body)
    return found, lambda block: drop_reasoning(messages, block)


def _carried(ctx: RequestContext) -> frozenset[metadata.Carried]:
    """What of an OpenAI request's metadata the providers it may reach get
    (``backends.openai_metadata_carried``): its own, and those of the fallbacks of its
    failover chain that can serve it (one embedding in another model's space is never
    tried, so never sent the body)."""
    assert ctx.route is not None
    upstreams = [ctx.upstream] if ctx.upstream is not None else []
    if ctx.failover_model is not None:
        chain = ctx.runtime.failover.get(ctx.failover_model, {})
        upstreams += [up for _, up in chain.values() if serves_request(ctx, up)]
    api = ctx.route.api
    return frozenset(openai_metadata_carried(api, upstream) for upstream in upstreams)


def _request_images(ctx: RequestContext) -> list[Image]:
    """The request's images, as ``_request_slots`` reads its text, for moderation that
    reads images (``guardrails.moderated_images``)."""
    assert ctx.body is not None and ctx.route is not None
    api, body = ctx.route.api, ctx.body
    if api is RouteApi.OPENAI_AUDIO:
        return []  # an audio file: no picture
    if ctx.form is not None:
        return edit_images(ctx.form)  # an image edit's pictures, from its form
    if api in RESPONSES_REQUESTS:
        return responses_images(body)
    if api in GEMINI_APIS:
        return gemini_images(gemini_request(body))
    if api in (
        RouteApi.OPENAI_EMBEDDINGS,
        RouteApi.OPENAI_COMPLETIONS,
        RouteApi.OPENAI_IMAGES,
        RouteApi.RERANK,
    ):
        return []
    converse = api is RouteApi.BEDROCK_CONVERSE
    if api is RouteApi.BEDROCK_COUNT_TOKENS:
        member, body = counted_request(ctx.body)
        converse = member == CONVERSE
    return converse_images(body) if converse else chat_images(body)


async def _request_webhooks(
    ctx: RequestContext,
    phase: PhaseGuards,
    slots: list[TextSlot],
    deadline: float,
    drop: Dropper | None,
) -> bool:
    changed = False
    for guard, client in phase.webhooks:
        if not slots:
            # No text (an embeddings request or a text completion of token ids): nothing
            # to ask it about.
            record(ctx, guard.name, "request", "pass")
            continue
        messages = [{"role": slot.role, "content": slot.text} for slot in slots]
        try:
            async with asyncio.timeout_at(deadline):
                verdict = await client.check_request(
                    messages, client.headers_for(_forwardable(ctx))
                )
        except WebhookError as exc:
            if exc.input_refused is not None:
                # The same text meets the same refusal: a 503 had SDKs retry it for
                # nothing, as a moderation service's refusal did.
                _cannot_check(ctx, guard, _refused_input(guard, exc.input_refused))
                record(ctx, guard.name, "request", "fail_open")
                continue
            _unavailable(ctx, guard, "request", str(exc), exc.retry_after)
            continue
        except TimeoutError:
            _unavailable(ctx, guard, "request", OUT_OF_TIME)
            continue
        changed = _apply_verdict(ctx, guard, "request", verdict, slots, drop) or changed
    return changed


def _apply_verdict(
    ctx: RequestContext,
    guard: GuardConfig,
    phase: str,
    verdict: Verdict,
    slots: list[TextSlot],
    drop: Dropper | None = None,
) -> bool:
    """Act on a webhook's verdict and record it: a refusal raises, a mask writes the texts
    it changed back into their slots (a request goes without signed reasoning it changed,
    where it may: ``drop``). Whether any text changed."""
    if verdict.action == "reject":
        record(ctx, guard.name, phase, "reject")
        raise _webhook_refusal(guard, verdict.body, verdict.status)
    if verdict.action != "mask" or verdict.contents is None:
        record(ctx, guard.name, phase, "pass")
        return False
    changed = False
    dropped: set[int] = set()
    removed: set[TextSlot] = set()
    for slot, content in zip(slots, verdict.contents, strict=True):
        if content == slot.text or (dropped and id(slot.block) in dropped):
            continue  # unchanged, or gone from the history with a block dropped before it
        if slot.removable:
            # As a matcher's mask there: the request goes on without the field.
            slot.remove()
            removed.add(slot)
            changed = True
            continue
        if slot.fixed is not None:
            # As a matcher's mask there: a name something refers to cannot change.
            record(ctx, guard.name, phase, "reject")
            raise _refusal(guard, f": {slot.fixed} cannot be masked")
        if slot.signed:
            # As a matcher's mask there: signed reasoning cannot change.
            gone = drop(slot.block) if drop is not None and slot.block is not None else None
            if gone is None:
                record(ctx, guard.name, phase, "reject")
                raise _refusal(guard, f": {_SIGNED[phase]} cannot be masked")
            dropped |= gone
            changed = True
            continue
        slot.write(content)
        changed = True
    if dropped or removed:
        _forget(slots, dropped, removed)
    record(ctx, guard.name, phase, "mask")
    return changed


def _forwardable(ctx: RequestContext) -> dict[str, str]:
    """The client's headers a webhook may be sent: never a credential, whatever the config."""
    blocked = CREDENTIAL_HEADERS | ctx.runtime.key_headers
    return {k: v for k, v in ctx.request_headers.items() if k not in blocked}


def _webhook_refusal(guard: GuardConfig, body: str, status: int) -> GuardrailRejectedError:
    # The webhook's own body and status win over the guard's configured response;
    # where it gives none usable (an empty body, a status that is no error), the
    # operator's configured one stands.
    if not 400 <= status <= 599:
        status = guard.status
    message = body or guard.message or f"Rejected by guardrail '{guard.name}'"
    return _verdict(message, status)


def _enrich(ctx: RequestContext, guards: RouteGuards) -> None:
    if guards.enrichment is None or ctx.body is None:
        return
    # Token counting takes a Messages body too: enriched like /v1/messages, its count is
    # of the prompt a Messages call sends (a "system" message in `messages` is refused).
    # So does a Responses token count: its count is of the input a /v1/responses call
    # sends. A compaction route takes no enrichment (config.model).
    # A Bedrock count is of its counted request, enriched as that request would be; so is
    # a Gemini count of a whole generateContentRequest.
    api = ctx.route.api if ctx.route is not None else None
    body = ctx.body
    gemini = api in GEMINI_APIS
    if gemini:
        body = gemini_request(ctx.body)
    converse = api is RouteApi.BEDROCK_CONVERSE
    anthropic = api in ANTHROPIC_APIS or api in MESSAGES_BODY_APIS
    if api is RouteApi.BEDROCK_COUNT_TOKENS:
        member, body = counted_request(ctx.body)
        converse, anthropic = member == CONVERSE, member != CONVERSE
    enrich(
        body,
        guards.enrichment,
        template_values(ctx),
        anthropic=anthropic,
        responses=api in RESPONSES_REQUESTS,
        converse=converse,
        gemini=gemini,
    )
    ctx.body_changed = True


# The client APIs whose answers response guards do not read.
_UNGUARDED_ANSWERS = frozenset(
    {RouteApi.OPENAI_EMBEDDINGS, RouteApi.OPENAI_IMAGES, RouteApi.OPENAI_AUDIO, RouteApi.RERANK}
)


class GuardResponseStage:
    """Runs after ResponseStage in the same phases (see the module docstring)."""

    def response_headers(
        self, ctx: RequestContext, out: PhaseOutput, response_headers: dict[str, str]
    ) -> None:
        route = ctx.route
        if route is None or not ctx.accounted or ctx.response_status >= 300:
            return
        if route.api in _UNGUARDED_ANSWERS or route.api in UNMETERED_APIS:
            # Vectors, pictures, a count, a moderation's classification: no text to guard;
            # a transcript (in text, srt or vtt as often as JSON) is not read by response
            # guards either.
            return
        guards = ctx.runtime.guardrails.for_route(route.name)
        if guards is None or guards.response.empty:
            return
        encoding = response_headers.get("content-encoding", "").strip().lower()
        if encoding and encoding != "identity" and not _decoded(ctx, encoding):
            # Compressed although the gateway asked for no encoding, in one it cannot read
            # (br, zstd): no guard can read the text, which the client's SDK decodes.
            # Refused unread, not sent on unguarded; the provider billed it whole.
            charge_unread_answer(ctx)
            raise _unguarded_encoding(route.name, encoding)
        anthropic = route.api in MESSAGES_BODY_APIS
        streamed = out.mode_override is not None and out.mode_override.response_body == "STREAMED"
        completions = route.api is RouteApi.OPENAI_COMPLETIONS
        if streamed and ctx.stream_unasked and route.api in _UNGUARDABLE_STREAMS:
            # The request asked for one whole answer, which the route can guard; the
            # provider streamed it anyway, as the route cannot guard (its text repeats
            # outside the deltas a stream guard masks). Refused unread, not sent on
            # unguarded; the provider billed it whole, so it is charged as such.
            charge_unread_answer(ctx)
            raise _unguarded_unasked_stream(route.name, route.api)
        # A structured output's text is JSON the client decodes: masks keep it JSON.
        json_text = streamed and asks_for_json(ctx.body)
        if streamed and route.api is RouteApi.BEDROCK_INVOKE:
            # Claude's events in AWS frames (another family's body was refused).
            ctx.response_guard = FramedStreamGuard(guards.response.matchers, json_text=json_text)
        elif streamed and route.api is RouteApi.BEDROCK_CONVERSE:
            ctx.response_guard = ConverseStreamGuard(guards.response.matchers, json_text=json_text)
        elif streamed and route.api is RouteApi.GEMINI_GENERATE_CONTENT:
            ctx.response_guard = GeminiStreamGuard(guards.response.matchers, json_text=json_text)
        elif streamed:
            ctx.response_guard = StreamGuard(
                guards.response.matchers,
                anthropic=anthropic,
                completions=completions,
                json_text=json_text,
            )
        else:
            ctx.response_guard = guards
        # Masking changes the body's length.
        if "content-length" not in out.remove_headers:
            out.remove_headers.append("content-length")

    def response_body(
        self, ctx: RequestContext, out: PhaseOutput, chunk: bytes, end_of_stream: bool
    ) -> Awaitable[None] | None:
        state = ctx.response_guard
        if state is None:
            return None
        assert ctx.route is not None
        guards = ctx.runtime.guardrails.for_route(ctx.route.name)
        if guards is None:
            return None
        data = out.body if out.body is not None else chunk
        if isinstance(state, StreamGuard):
            events = state.split(data, end_of_stream)
            if guards.response.webhooks and events:
                checked = self._stream_with_webhooks(ctx, out, state, guards, events, end_of_stream)
                if isinstance(state, FramedStreamGuard):
                    return _reframed(checked, state, out)
                return checked
            self._render(ctx, out, state, guards, events, end_of_stream)
            if isinstance(state, FramedStreamGuard):
                out.body = state.reframe(out.body or b"")
            return None
        if not end_of_stream:
            if out.body is None:
                ctx.response_guard_parts.append(chunk)
                out.body = b""
            return None
        if guards.response.webhooks:
            return self._buffered_with_webhooks(ctx, out, guards, data)
        self._buffered(ctx, out, guards, data, None)
        return None

    # --- buffered answers ---------------------------------------------------------------

    def _answer(self, ctx: RequestContext, data: bytes) -> tuple[Any, list[TextSlot]]:
        parts = ctx.response_guard_parts
        if parts:
            data = b"".join((*parts, data))
        translator = ctx.translator
        # The translator already parsed (or built) the answer: no second parse.
        answer = getattr(translator, "answer", None) if translator is not None else None
        if not isinstance(answer, dict):
            try:
                answer = orjson.loads(data)
            except orjson.JSONDecodeError:
                return None, []
        if not isinstance(answer, dict):
            return None, []
        assert ctx.route is not None
        if ctx.route.api in MESSAGES_BODY_APIS:
            return answer, anthropic_answer_slots(answer)
        if ctx.route.api in RESPONSES_REQUESTS:
            return answer, responses_answer_slots(answer)
        if ctx.route.api is RouteApi.OPENAI_COMPLETIONS:
            return answer, completion_answer_slots(answer)
        if ctx.route.api is RouteApi.BEDROCK_CONVERSE:
            return answer, converse_answer_slots(answer)
        if ctx.route.api is RouteApi.GEMINI_GENERATE_CONTENT:
            return answer, gemini_answer_slots(answer)
        return answer, openai_answer_slots(answer)

    async def _buffered_with_webhooks(
        self, ctx: RequestContext, out: PhaseOutput, guards: RouteGuards, data: bytes
    ) -> None:
        answer, slots = self._answer(ctx, data)
        changed = False
        deadline = _guard_deadline(ctx, store_follows=False)
        for guard, client in guards.response.webhooks:
            if not slots:
                break
            try:
                async with asyncio.timeout_at(deadline):
                    verdict = await client.check_response(
                        [slot.text for slot in slots], client.headers_for(_forwardable(ctx))
                    )
            except WebhookError as exc:
                refused = _refused_answer(guard, exc, streamed=False, shape=ctx.error_shape)
                _unavailable(ctx, guard, "response", str(exc), exc.retry_after, refused)
                continue
            except TimeoutError:
                _unavailable(ctx, guard, "response", OUT_OF_TIME)
                continue
            changed = _apply_verdict(ctx, guard, "response", verdict, slots) or changed
        self._buffered(ctx, out, guards, data, (answer, slots, changed))

    def _buffered(
        self,
        ctx: RequestContext,
        out: PhaseOutput,
        guards: RouteGuards,
        data: bytes,
        found: tuple[Any, list[TextSlot], bool] | None,
    ) -> None:
        answer, slots, changed = found if found is not None else (*self._answer(ctx, data), False)
        if answer is None:
            return
        matchers = guards.response.matchers
        if matchers and _run_matchers(ctx, "response", matchers, slots):
            changed = True
        if changed:
            out.body = orjson.dumps(answer)
        elif ctx.response_guard_parts:
            out.body = b"".join((*ctx.response_guard_parts, data))

    # --- streams ------------------------------------------------------------------------

    async def _stream_with_webhooks(
        self,
        ctx: RequestContext,
        out: PhaseOutput,
        state: StreamGuard,
        guards: RouteGuards,
        events: list[Any],
        end_of_stream: bool,
    ) -> None:
        # Each body chunk's text deltas go to the webhook as they arrive, one choice each.
        slots = state.texts(events)
        deadline = _guard_deadline(ctx, store_follows=False)
        for guard, client in guards.response.webhooks:
            if _failed_open(ctx, guard.name):
                # It failed earlier in this stream: waiting up to its timeout again at
                # every chunk would stall the stream for a verdict that is not needed.
                continue
            texts = [holder[key] for _, _, holder, key in slots]
            if not any(texts):
                break
            try:
                async with asyncio.timeout_at(deadline):
                    verdict = await client.check_response(
                        texts, client.headers_for(_forwardable(ctx))
                    )
            except (WebhookError, TimeoutError) as exc:
                failed = exc if isinstance(exc, WebhookError) else None
                why = OUT_OF_TIME if failed is None else str(failed)
                retry_after = None if failed is None else failed.retry_after
                unread = (
                    None
                    if failed is None
                    else _refused_answer(guard, failed, streamed=True, shape=ctx.error_shape)
                )
                try:
                    _unavailable(ctx, guard, "response", why, retry_after, unread)
                except GuardrailRejectedError as refused:
                    state.ended = True
                    out.body = self._stream_error(ctx, refused)
                    return
                continue
            if verdict.action == "reject":
                record(ctx, guard.name, "response", "reject")
                state.ended = True
                out.body = self._stream_error(
                    ctx, _webhook_refusal(guard, verdict.body, verdict.status)
                )
                return
            if verdict.action == "mask" and verdict.contents is not None:
                for (event, channel, holder, key), content in zip(
                    slots, verdict.contents, strict=True
                ):
                    if holder[key] == content:
                        continue
                    if signed_channel(channel):
                        # Signed reasoning cannot change (as a matcher's mask there).
                        record(ctx, guard.name, "response", "reject")
                        state.ended = True
                        signed = _refusal(guard, f": {_SIGNED['response']} cannot be masked")
                        out.body = self._stream_error(ctx, signed)
                        return
                    holder[key] = content
                    event.changed = True
                _once(ctx, guard.name, "mask")
        self._render(ctx, out, state, guards, events, end_of_stream)

    def _render(
        self,
        ctx: RequestContext,
        out: PhaseOutput,
        state: StreamGuard,
        guards: RouteGuards,
        events: list[Any],
        end_of_stream: bool,
    ) -> None:
        if state.ended:
            out.body = b""
            return
        matchers = guards.response.matchers

        def error(index: int) -> bytes:
            # Named as a whole answer's refusal is: the kinds of data found, never the text.
            rejection = state.rejection
            found = rejection.found if rejection is not None else ()
            if rejection is not None and rejection.signed:
                why = _signed_found(found, "response")
            else:
                why = _found(found)
            refusal = _refusal(matchers.guards[index].config, why)
            return self._stream_error(ctx, refusal, framed=False)

        out.body = state.render(events, end_of_stream, error)
        if state.rejected_by is not None:
            guard = matchers.guards[state.rejected_by]
            record(ctx, guard.name, "response", "reject")
            return
        if end_of_stream:
            _record_stream_decisions(ctx, state, guards, whole=True)

    def done(self, ctx: RequestContext) -> None:
        # A stream Envoy never ended: the client hung up at its terminal event (Envoy
        # then drops the empty end of stream) or mid-answer. Its decisions are recorded
        # here, before the log line is written (a later stage's done).
        state = ctx.response_guard
        if not isinstance(state, StreamGuard) or state.rejected_by is not None:
            return
        if state.ended and not getattr(state, "broken", False):
            return  # a refusal, recorded as it ended the stream
        assert ctx.route is not None
        guards = ctx.runtime.guardrails.for_route(ctx.route.name)
        if guards is not None:
            _record_stream_decisions(ctx, state, guards, whole=ctx.completed)

    @staticmethod
    def _stream_error(
        ctx: RequestContext, error: GuardrailRejectedError, framed: bool = True
    ) -> bytes:
        # The client reads this refusal last: the log line and the span name it. It ends
        # the client's answer, as a provider's error event does: a client that hangs up
        # once it has read it (Envoy then never sends the end of stream) cut nothing
        # short, and is counted under its status, not as aborted.
        ctx.stream_refusal = error
        ctx.completed = True
        if ctx.error_shape == "google":
            # Google's failure event, which google-genai raises (GeminiStreamGuard).
            google = error.body("google")
            return b"data: " + google + b"\n\n" if framed else google
        # InvokeModel's Claude events and ConverseStream's: their guard (FramedStreamGuard)
        # frames Anthropic's error event, the only error it reads.
        in_frames = isinstance(ctx.response_guard, FramedStreamGuard)
        anthropic = in_frames or (ctx.route is not None and ctx.route.api in MESSAGES_BODY_APIS)
        body = anthropic_error_body(error.message, error.status) if anthropic else error.body()
        if not framed:
            return body
        if anthropic:
            return b"event: error\ndata: " + body + b"\n\n"
        return b"data: " + body + b"\n\ndata: [DONE]\n\n"


async def _reframed(checked: Awaitable[None], state: FramedStreamGuard, out: PhaseOutput) -> None:
    """A framed stream's chunk once its webhooks answered: what they let out, framed."""
    await checked
    out.body = state.reframe(out.body or b"")


def _seen(ctx: RequestContext, guard: str) -> bool:
    return any(d["guard"] == guard and d["phase"] == "response" for d in ctx.guardrail_decisions)


def _failed_open(ctx: RequestContext, guard: str) -> bool:
    return any(
        d["guard"] == guard and d["phase"] == "response" and d["action"] == "fail_open"
        for d in ctx.guardrail_decisions
    )


def _record_stream_decisions(
    ctx: RequestContext, state: StreamGuard, guards: RouteGuards, *, whole: bool
) -> None:
    """Each response guard's decision on a stream, once: a mask where it masked; a pass
    where it did not, when the client got the whole answer (cut short, no guard saw it
    all)."""
    masked = state.masked
    for index, guard in enumerate(guards.response.matchers.guards):
        if index in masked:
            _once(ctx, guard.name, "mask")
        elif whole:
            _once(ctx, guard.name, "pass")
    if whole:
        for hook, _ in guards.response.webhooks:
            _once(ctx, hook.name, "pass")


def _once(ctx: RequestContext, guard: str, action: str) -> None:
    """A stream's guard decision, recorded once per request."""
    if not _seen(ctx, guard):
        record(ctx, guard, "response", action)

"""A non-streamed answer without the provider's count is charged what the quota reserved
for it, in every ledger alike.

A provider bills a whole answer once it has started sending it (its success status
came back), whether or not anyone read the body to its end: the client hung up while
the body was in flight, the upstream reset mid-body, or Envoy dropped an answer larger
than ``envoy.max_response_body_bytes`` (or the gateway refused a compressed one larger
than that once decoded: ``charge_answer_too_large``). The usage count is inside that body, so the
gateway never reads it. The same holds for a whole answer that carried no count
(garbage, or a provider that sends none). Such a request is charged an estimate: the
prompt as the quota estimate counts it (or as the provider counted it before the body,
which is what it bills: Bedrock's input count header on an InvokeModel answer without
its output count, ``charged_prompt``), and for the completion (none for embeddings,
whose vectors are not billed as tokens):

- a cut answer: the allowance the quota reserved (the body's ``max_tokens`` /
  ``max_completion_tokens`` / ``max_output_tokens``, lowered by a hard cap when one
  capped it, else ``quotas.default_max_tokens``; for a text completion, times the
  completions it asked for: ``quota.reserved_completion``), the most the provider may
  have generated: the gateway saw none of it;
- a whole answer: its generated text, one token per four characters, as a cut stream's
  (``partial_usage.generated_chars``): an answer that carries no count is charged what
  it carries, not the allowance (a provider that never reports usage would otherwise
  be billed ``default_max_tokens`` on every request); garbage carries nothing. The
  calls of the provider's server tools it shows (a Responses answer's web and file
  search items, Anthropic's ``server_tool_use`` blocks) are billed per call on top, as
  a stream's are (``partial_usage``).

A Responses request with the image generation tool reserves one picture beside the
allowance (``quota.tool_picture``), which no allowance field bounds: an answer cut, or
never read (a client gone before it, one over the buffer), is charged that picture too,
at the image model's price (``openai_image_usage.reserved_pictures``), as a stream cut
while the tool drew is charged each picture it had begun (``partial_usage``). The provider
may have drawn it, and the body that would say so never came whole.

It is marked ``usage_estimated``, as a cut stream is (``partial_usage``), so the quota
settles at the very total the log line, the token and cost metrics, the usage rollup
and, for a whole answer, the span record.

The answer had started when the provider's status was a success (below 400), with no
error of the gateway's: a request refused, or answered with an error, produced nothing,
is charged nothing and its reservation released.

A request whose stream ended with no answer at all is charged the same estimate as a cut
answer when Envoy had taken the gateway's go-ahead for it (``ctx.request_released``): it
went to its provider, which goes on generating a non-streamed answer whose client left
and bills it (a client's timeout on a long answer is the common case). A streamed one is
charged its prompt alone: the provider read (prefilled) it and bills it, and stops
generating when its reader leaves, and nothing was streamed (a stream cut one chunk later
is charged that prompt and the chunk's text, ``partial_usage``). On the lean response
path a non-streamed answer comes in one buffered body message, which carries the status,
and a stream's status comes with its first chunk: an answer cut before it, and a
provider's answer without a body (Envoy sends no message for it), end the stream the same
way, and the ext_proc stream's own end does not tell them apart (measured with Envoy
1.40): they are charged as the client's hang-up they mostly are (docs/architecture.md). A
client gone before the go-ahead (its body still arriving, the gateway still deciding)
reached no provider: charged nothing. A failover request is charged so once, as the
chain member whose attempt was in flight, which the store names
(``stages.attempt_in_flight``): its allowance, its tier, its price.

After a failover the answer is read whole by the per-attempt filter first, and one
over ``envoy.max_response_body_bytes`` never reaches the downstream filter: Envoy
answers the client a 502 ``response_too_large`` of its own. Its reply names the
attempt whose answer it dropped (``envoy_failover``), and only that reply does, so
this stage charges that attempt's provider and model as above, at the reply's headers,
and records the client's 502 and error (not counted as the provider's error: it
answered). Envoy's reply does not carry the attempt's own status: an error body over
the buffer would be charged too (providers' errors are a few hundred bytes).

A failover attempt before the answer the client got may have been cut the same way
after its provider's success status: for Envoy's router a non-streamed answer has not
started while the per-attempt filter reads it, so a reset or a stall mid-body is retried
on the next member, and the client gets that one's answer (or, when every attempt was
cut, Envoy's 502). Each such attempt named itself, and the failover route's
``x-aigw-started`` header lists them (``envoy_failover``). This stage reads and removes
it (the client never sees it), leaves out the provider that answered (named in the
answer's headers, or in Envoy's reply for an answer over the buffer), a name that is
no member of the request's chain, and a repeated one, and charges each remaining
attempt a cut answer at its member's price: the prompt estimate and the completion allowance,
``usage_estimated``, under its provider (``ctx.cut_attempts``). A Bedrock member's price is
that of the tier its request asked for, as its answer cut without failover is
(``backends.bedrock_tier_asked``); other providers name theirs only in the body that was
cut. The ledgers add them to
the answer's charge. A client that hangs up while an attempt's body is in flight ends
the request before any answer: no message comes to read the header from, so that
attempt is not charged by name (the request is, once, as the attempt in flight).

A token count (Anthropic's ``count_tokens``) and the routes that reach no model are
never billed. Streams that began are ``partial_usage``'s: they carry their text, which is
counted.

The response stage charges a whole answer at its end (so its cost and the span go
with the last answer); this stage's ``done`` charges a cut one, and runs before the
quota stage's, which settles with it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from extproc import headers
from extproc.answer_status import no_answer
from extproc.backends import ENVOY_UPSTREAM_TIME, bedrock_tier_asked
from extproc.config.model import INPUT_ONLY_APIS, ProviderType, RouteApi
from extproc.context import CutAttempt, PhaseOutput, RequestContext, Usage
from extproc.envoy_failover import STARTED, STARTED_SEPARATOR
from extproc.errors import response_too_large
from extproc.images_api import input_image_tokens, picture_allowance
from extproc.quota.estimate import CHARS_PER_TOKEN
from extproc.runtime import Upstream
from extproc.stages.quota import billed_prompt_usage, reserved_completion, tool_picture
from extproc.translators.anthropic_anthropic import ServerToolTally
from extproc.translators.base import counted_prompt
from extproc.translators.generated_text import generated_chars
from extproc.translators.openai_image_usage import (
    reserved_pictures,
    tool_model,
    with_image_generation,
)
from extproc.translators.openai_images import pictures_counted
from extproc.translators.openai_responses import server_tool_calls

# The client APIs whose answers generate text, billed as completion tokens.
_GENERATES = frozenset(
    {
        RouteApi.OPENAI_CHAT,
        RouteApi.ANTHROPIC_MESSAGES,
        RouteApi.BEDROCK_CONVERSE,
        RouteApi.BEDROCK_INVOKE,
        RouteApi.OPENAI_RESPONSES,
        RouteApi.OPENAI_COMPLETIONS,
        RouteApi.OPENAI_RESPONSES_COMPACT,
        # Google bills a generateContent answer it started, cut or without its
        # usageMetadata, as any provider does (its allowance: maxOutputTokens).
        RouteApi.GEMINI_GENERATE_CONTENT,
        # OpenAI bills the pictures of an image generation it started (its allowance: the
        # pictures' tokens at their quality and size, images_api.picture_allowance).
        RouteApi.OPENAI_IMAGES,
        # OpenAI bills a transcription it made whether or not its answer reached the
        # client or carried a count (its allowance: the transcript of the audio's
        # estimate, audio_api.transcript_allowance).
        RouteApi.OPENAI_AUDIO,
    }
)
# The client APIs whose requests a provider bills by their tokens.
_BILLED = _GENERATES | INPUT_ONLY_APIS


class CutAnswerStage:
    def response_headers(
        self, ctx: RequestContext, out: PhaseOutput, response_headers: dict[str, str]
    ) -> None:
        if ctx.failover_model is None:
            return  # only a failover route adds the header: elsewhere it means nothing
        # Before the response stage, which takes the attempt's name from these headers
        # (the price, the span) and removes them from what the client gets.
        started = response_headers.get(STARTED)
        out.remove_headers.append(STARTED)
        if started:
            answered = response_headers.get(headers.ANSWERED_BY_PROVIDER)
            ctx.cut_attempts = cut_attempts(ctx, started, answered)
        if _dropped_attempt(response_headers):
            charge_dropped_attempt(ctx, response_headers.get(headers.ANSWERED_BY_PROVIDER))

    def done(self, ctx: RequestContext) -> None:
        # Only a request that ended without a count: every other one is settled already.
        settled = ctx.usage_reported or ctx.usage_estimated
        if charged_as_left(ctx):
            # The failover attempt in flight, as the store named it (attempt_in_flight):
            # its member's allowance and tier, not the chain's largest or the primary's.
            member = ctx.attempt_in_flight
            sent_to = member or ctx.upstream
            if sent_to is not None:
                # Priced as its answer cut after the status would be: a Bedrock model at
                # the tier asked for (that answer's translator starts from it).
                ctx.tier_asked = _tier_asked(ctx, sent_to)
            # A stream's provider read the prompt, and nothing was streamed: a stream cut
            # one chunk later is charged the same prompt and that chunk's text.
            if ctx.stream:
                _charge(ctx, 0)
            else:
                _charge_allowance(ctx, member)
            return
        unsettled = not (ctx.stream or settled)
        if unsettled and _billed(ctx) and _answer_started(ctx):
            translator = ctx.translator
            counted = translator.usage if translator is not None else None
            if counted is None:
                # Bedrock's token headers, read before the body that was cut (Claude's).
                counted = getattr(translator, "counted_usage", None)
            if counted is not None:
                # The provider counted the answer before its body (Bedrock's token headers
                # of InvokeModel's answer): that count is the bill.
                ctx.usage = counted
                ctx.usage_reported = True
                return
            _charge_allowance(ctx)


def charged_as_left(ctx: RequestContext) -> bool:
    """Whether the request is charged as one its client left before any answer came,
    after it went to its provider (``done``): not settled otherwise, billed by tokens."""
    settled = ctx.usage_reported or ctx.usage_estimated
    return not settled and _billed(ctx) and _left_unanswered(ctx)


def charge_whole_answer(ctx: RequestContext, answer: Any) -> None:
    """Charge a whole non-streamed answer without the provider's count (``answer``: as
    parsed, None if it was no JSON) its prompt and generated text, ``usage_estimated``;
    nothing if the answer is an error or the request is not billed by tokens."""
    if not (_billed(ctx) and _answer_started(ctx)):
        return
    completion = 0
    if ctx.route is not None and ctx.route.api is RouteApi.OPENAI_IMAGES:
        # Its pictures, which carry no text to count: the allowance of those it holds.
        completion = _pictures_allowance(ctx, answer)
    elif ctx.route is not None and ctx.route.api is RouteApi.OPENAI_AUDIO:
        # The transcript alone (a verbose_json's segments repeat it; a text or subtitle
        # answer a provider sent whatever the format asked is all transcript).
        characters = getattr(ctx.translator, "transcript_chars", 0)
        completion = -(-characters // CHARS_PER_TOKEN)
    elif answer is not None and ctx.route is not None and ctx.route.api in _GENERATES:
        # Re-serialised only on this rare path, to read it as a stream's text is read.
        characters = generated_chars(orjson.dumps(answer))
        completion = -(-characters // CHARS_PER_TOKEN)
    _charge(ctx, completion, _server_tool_requests(ctx, answer))


def _pictures_allowance(ctx: RequestContext, answer: Any) -> int:
    """The allowance of the pictures a whole Images API answer without its usage holds
    (its ``data``), at the quality and size the request asked for."""
    pictures = pictures_counted(ctx.translator)
    data = answer.get("data") if isinstance(answer, dict) else None
    if not pictures and isinstance(data, list):
        pictures = len(data)
    if not pictures or ctx.body is None:
        return 0
    return picture_allowance({**ctx.body, "n": pictures})


def _server_tool_requests(ctx: RequestContext, answer: Any) -> dict[str, int]:
    """The provider's server tools' requests a whole answer without its count shows,
    billed per request on top of the tokens as a stream's are (``partial_usage``): the
    billed calls of a Responses answer's ``output`` (web and file search), Anthropic's
    ``server_tool_use`` blocks (web search, web fetch) in a message's ``content``."""
    api = ctx.route.api if ctx.route is not None else None
    if not isinstance(answer, dict):
        return {}
    if api is RouteApi.OPENAI_RESPONSES:
        return server_tool_calls(answer.get("output"))
    content = answer.get("content")
    if api is RouteApi.ANTHROPIC_MESSAGES and isinstance(content, list):
        tally = ServerToolTally()
        for block in content:
            tally.block_started(block)
        return tally.counts
    return {}


def charge_answer_too_large(ctx: RequestContext) -> None:
    """Charge a whole success answer larger than the gateway reads (a compressed one,
    decoded: ``answer_encoding``) as one over Envoy's buffer: the prompt estimate and
    the completion allowance. When its 502 replaced the answer, that is the client's
    error (on the lean path the provider's status had left)."""
    if not _billed(ctx) or ctx.first_byte_at is None or no_answer(ctx.upstream_status or 0):
        return
    if ctx.response_status >= 400:
        ctx.error = response_too_large()
    _charge_allowance(ctx)


def charge_unread_answer(ctx: RequestContext) -> None:
    """Charge a success answer the gateway refuses before reading it (a stream the
    provider sent unasked that the route cannot guard) as one over Envoy's buffer: the
    provider generated it whole, and billed it."""
    if _billed(ctx):
        _charge_allowance(ctx)


def charge_dropped_attempt(ctx: RequestContext, provider: str | None = None) -> None:
    """Charge a failover attempt's answer Envoy dropped for its size as a cut answer (the
    allowance of the chain member on ``provider``, whose answer it was), and record the
    error the client got instead."""
    ctx.error = response_too_large()
    if _billed(ctx):
        member = ctx.runtime.failover.get(ctx.failover_model or "", {}).get(provider or "")
        # Priced at the tier a Bedrock member was asked for (the response stage's
        # ctx.tier_asked): its body, which names the tier, was dropped.
        _charge_allowance(ctx, member[1] if member is not None else None)


def cut_attempts(ctx: RequestContext, started: str, answered: str | None) -> tuple[CutAttempt, ...]:
    """The attempts ``started`` names (``<provider>,`` each) that did not answer, each
    charged as a cut answer at its chain member's price. A name no member of the
    request's chain has is left out: only the gateway writes the header, and a chain has
    one member per provider, so nothing is charged twice."""
    if not _billed(ctx):
        return ()
    chain = ctx.runtime.failover.get(ctx.failover_model or "", {})
    providers = dict.fromkeys(started.split(STARTED_SEPARATOR))
    charged = []
    for provider in providers:
        member = chain.get(provider)
        if member is None or provider == answered:
            continue
        model, upstream = member
        prompt = ctx.estimated_prompt_tokens()
        # The allowance this member's attempt was sent (Claude's thinking budget added to
        # an OpenAI client's), not the request's primary's.
        completion = reserved_completion(ctx, upstream)
        usage = Usage(prompt, completion, prompt + completion)
        tier = _tier_asked(ctx, upstream)
        cost = ctx.runtime.prices.cost(model, usage, tier)
        charged.append(CutAttempt(provider, model, usage, cost))
    return tuple(charged)


def _tier_asked(ctx: RequestContext, member: Upstream) -> str | None:
    """The service tier a cut attempt is priced at, as the member's answer cut without
    failover would be: the tier its request asked of a Bedrock member, which serves it
    as asked (``backends.bedrock_tier_asked``). Other providers name theirs (and
    Anthropic its inference geography) only in the body that was cut: the model's own
    price."""
    if member.provider.type is not ProviderType.BEDROCK or ctx.route is None:
        return None
    return bedrock_tier_asked(ctx.route.api, ctx.body, ctx.request_headers)


def _dropped_attempt(response_headers: dict[str, str]) -> bool:
    """Envoy's own reply (no provider's answer passed its router, which would have added
    its service time) naming an attempt: only its reply to an answer over the buffer
    names one (envoy_failover); a provider's forged name the attempt overwrites."""
    return (
        headers.ANSWERED_BY_PROVIDER in response_headers
        and ENVOY_UPSTREAM_TIME not in response_headers
    )


def _charge_allowance(ctx: RequestContext, member: Upstream | None = None) -> None:
    """Charge an answer that never came whole what the quota reserved for it: the
    completion allowance (``member``'s: a failover attempt's) and the image generation
    tool's picture, which the provider may have drawn."""
    _charge(ctx, reserved_completion(ctx, member))
    picture = tool_picture(ctx)
    if picture and ctx.usage is not None and ctx.body is not None:
        drawn = reserved_pictures(1, picture, tool_model(ctx.body.get("tools")))
        ctx.usage = with_image_generation(ctx.usage, drawn)


def _charge(ctx: RequestContext, completion: int, tools: dict[str, int] | None = None) -> None:
    prompt = charged_prompt(ctx)
    pictures = ctx.route is not None and ctx.route.api is RouteApi.OPENAI_IMAGES
    ctx.usage = replace(
        prompt,
        completion_tokens=completion,
        total_tokens=prompt.prompt_tokens + completion,
        server_tool_requests=tools or {},
        # An image generation's completion is its pictures, at the image price.
        image_output_tokens=completion if pictures else prompt.image_output_tokens,
    )
    ctx.usage_estimated = True


def charged_prompt(ctx: RequestContext) -> Usage:
    """The prompt side of a bill estimated for want of the provider's whole count: what
    the provider counted before the answer (Bedrock's input count header, with its
    cache's reads and writes: ``base.counted_prompt``), which is what it bills, else the
    quota's estimate."""
    counted = counted_prompt(ctx.translator)
    if counted is not None:
        return counted
    prompt = ctx.estimated_prompt_tokens()
    billed = billed_prompt_usage(ctx, prompt)
    if billed is not None:
        return billed
    # An image edit's estimate holds its pictures' input tokens (``input_image_tokens``):
    # billed at the image input price, as the provider's count of them would be.
    pictures = input_image_tokens(ctx.form, ctx.body or {}) if ctx.form is not None else 0
    return Usage(prompt, 0, prompt, image_tokens=min(pictures, prompt))


def _billed(ctx: RequestContext) -> bool:
    """A request a provider bills by its tokens, which reached one."""
    route = ctx.route
    return (
        route is not None
        and route.api in _BILLED
        and ctx.body is not None
        and ctx.provider is not None
    )


def _left_unanswered(ctx: RequestContext) -> bool:
    """The stream ended before any answer (no status, no body) after Envoy took the
    gateway's go-ahead for the request: the client hung up while the provider worked on
    it (a client's timeout on a long answer, on a stream's slow first token), or, on the
    lean path, a provider's answer without a body came, which Envoy shows the gateway
    nothing of."""
    return (
        ctx.aborted
        and ctx.request_released
        and ctx.upstream_sent_at is not None
        and ctx.first_byte_at is None
        and ctx.error is None
    )


def _answer_started(ctx: RequestContext) -> bool:
    """The provider's success status came back, and nothing turned the answer into an
    error (a translated error, an answer the gateway replaced with one, a refusal)."""
    return (
        ctx.first_byte_at is not None and not no_answer(ctx.response_status) and ctx.error is None
    )

"""What one request costs: the price table and one pure function.

Money is counted in whole picodollars (1 USD = 10**12 pUSD) as Python ints, so
sums are exact however many requests are added, in any order, in any process.
A price in USD per million tokens with at most six decimals is a whole number
of picodollars per token (``price * 10**6``), so a request's cost is an exact
integer too. Decimal strings and floats appear only at the edges (log line,
metric, report), converted from the exact integer once.

A request is priced at the model that answered it: the model it named, or the
fallback that served it after a failover. A model without a price costs what its
provider reported charging for the request, when it reported it
(``Usage.reported_cost_picousd``: OpenRouter's ``usage.cost``); else it costs 0 and
is flagged ``priced=False`` (log line, rollup's ``unpriced_requests``, report).

The requests a provider's server tools made (Anthropic's web searches) are added at
their price per request. A tool the usage names but the table does not price is left
out of the cost, the request is flagged ``priced=False`` the same way (its bill is
short, and says so), and the operator is warned once per tool, not once per request.
So is a rerank whose provider billed searches (Cohere's ``search_units``) at a model
whose entry has no ``search_units_per_thousand``: its tokens are the gateway's estimate,
no bill, and the searches are left out of the cost.

A request is priced at the service tier its provider reports serving it at (OpenAI's
``service_tier``, Anthropic's ``usage.service_tier``, or ``fast`` when Anthropic's
``usage.speed`` says fast mode served it; read by the response translators where they
read usage): the model's price entry for that tier, if the table has one,
else the model's own price. The standard tier (``default``, ``standard``), an answer
that names none, and a stream cut before it named one are billed at the model's own
price; but an answer of Bedrock cut before it named one, which Bedrock serves at the tier
asked, is billed at that tier (``backends.bedrock_tier_asked``).

A request whose prompt is above its price entry's ``long_context`` threshold is priced
wholly at the long-context prices (prompt, cache reads and writes, completion), as
Anthropic bills Claude Sonnet 4's prompts above 200K tokens. The prompt is the usage's
``prompt_tokens``, cache reads and writes included, as the providers count it toward the
threshold; for a stream cut short, the estimate its usage holds. A request of several
sampling steps (Anthropic's compaction step, then its answer: ``Usage.steps``) is judged
step by step, each priced on its own prompt: their sum is no prompt the model read. The
entry is the tier's when the tier has one, so the tier is picked first, then the length.

Audio is billed at the audio prices when the entry gives them: the prompt's audio
tokens (Gemini's ``promptTokensDetails``, OpenAI's ``prompt_tokens_details.audio_tokens``)
at ``audio_input``, those read from the cache at ``cached_audio_input``, and the
completion's (OpenAI's ``completion_tokens_details.audio_tokens``, Gemini's
``candidatesTokensDetails``) at ``audio_output``; each count within the count it is part
of, the rest at the text prices. The completion's images (Gemini's image models,
``candidatesTokensDetails``' ``IMAGE`` entry) are billed at ``image_output`` the same
way, within what the completion's audio leaves of it; an entry without an image price
bills them at the output price, as before images were counted apart.
The prompt's images (the pictures an OpenAI GPT Image model reads:
``input_tokens_details.image_tokens``) are billed at ``image_input`` within what its
audio leaves of the uncached prompt; without that price, at the input price.

The pictures the Responses API's ``image_generation`` tool drew (``Usage.image_generation``,
parts of the prompt and completion counts) are billed at the image model's own entry,
not the answering model's: its input at its input price (its images at its image input
price), its output at its output price (its pictures at its image output price). The rest
of the counts is priced as above, the long-context threshold judged on it alone. An image
model without a price adds nothing and makes the cost ``priced=False`` (warned about once
per model), as an unpriced server tool does; its tier and geography are the image model's
standard ones (OpenAI names none for the tool).

A request the provider reports running in an inference geography the table prices apart
(Anthropic's ``usage.inference_geo``, ``us``: 1.1x) costs its tokens at the entry picked
above times that geography's multiplier (the model's, else the table's), rounded once to
the nearest picodollar; its server tools keep their price. The default geography
(``global``), an answer that names none, and a geography without a multiplier (warned
about once) are billed at 1x.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING

from extproc.config.pricing_model import (
    MULTIPLIER_DECIMALS,
    STANDARD_GEOS,
    STANDARD_TIERS,
    ModelPrice,
    PerTokenPrice,
    PricingConfig,
    TierPrice,
)
from extproc.context import ImageGeneration, Usage
from extproc.model_names import bedrock_spellings, comparable
from extproc.translators.base import reported_inference_geo, reported_service_tier

if TYPE_CHECKING:
    from extproc.config.model import ModelConfig
    from extproc.context import RequestContext

log = logging.getLogger(__name__)

PICO_PER_USD = 10**12
# USD per million tokens -> picodollars per token.
_PER_MILLION_TO_PICO_PER_TOKEN = 10**6
# USD per thousand requests -> picodollars per request.
_PER_THOUSAND_TO_PICO_PER_REQUEST = 10**9
# A geography's multiplier as a whole number of these parts (1.1 -> 11,000).
_MULTIPLIER_SCALE = 10**MULTIPLIER_DECIMALS
# Tool names (and model and tier pairs) warned about, per price table: a provider sending
# ever new names cannot grow the set, or the gateway's stderr, without bound.
_MAX_WARNED_TOOLS = 64


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """Picodollars per token: input (uncached), cached input, output, cache writes
    (5-minute, and Claude's 1-hour cache); and picodollars per request of each server
    tool, by the name the provider's usage gives it (``web_search``). ``tiers``: the
    prices of the service tiers the table prices apart, by the provider's tier name.
    ``long_context``: the prices of a prompt above its threshold, if billed apart.
    ``geos``: the multiplier of the token prices in each inference geography priced
    apart, in ten-thousandths (us: 11,000 for 1.1x)."""

    input: int
    cached_input: int
    output: int
    cache_write_input: int
    cache_write_1h_input: int
    server_tools: Mapping[str, int] = field(default_factory=dict)
    tiers: Mapping[str, TokenPrices] = field(default_factory=dict)
    long_context: LongContextPrices | None = None
    geos: Mapping[str, int] = field(default_factory=dict)
    # Audio prompt tokens, uncached and read from the cache (Gemini); None: the input
    # price and the cached input price, as any other prompt token.
    audio_input: int | None = None
    cached_audio_input: int | None = None
    # Completion tokens of audio (OpenAI's audio models, Gemini's TTS); None: the output
    # price, as any other completion token.
    audio_output: int | None = None
    # Completion tokens of images (Gemini's image models); None: the output price.
    image_output: int | None = None
    # Prompt tokens of images (OpenAI's GPT Image models); None: the input price.
    image_input: int | None = None
    # Image prompt tokens read from the cache (an image model's); None: the cached
    # input price.
    image_cached_input: int | None = None
    # Picodollars per prompt character, for a model billed by characters; None: by tokens.
    input_per_character: int | None = None
    # Picodollars per minute of audio, for a model billed by duration (whisper-1); None:
    # its audio is billed by its tokens.
    audio_input_per_minute: int | None = None
    # Picodollars per search unit, for a rerank model billed by searches (Cohere's);
    # None: by tokens.
    search_unit: int | None = None

    def at_tier(self, service_tier: str | None) -> TokenPrices:
        """The prices of the tier the provider served at: its own entry, else these
        (the standard tier, a tier without an entry, or none reported)."""
        if service_tier is None or not self.tiers:
            return self
        return self.tiers.get(service_tier, self)


@dataclass(frozen=True, slots=True)
class LongContextPrices:
    """The prices of a request whose prompt has more than ``above_input_tokens`` tokens."""

    above_input_tokens: int
    prices: TokenPrices


@dataclass(frozen=True, slots=True)
class Cost:
    picousd: int
    priced: bool
    # Priced at the long-context prices: the prompt was above the entry's threshold.
    long_context: bool = False

    @property
    def usd(self) -> Decimal:
        return usd(self.picousd)

    @property
    def usd_float(self) -> float:
        return usd_float(self.picousd)


FREE = Cost(0, True)
UNPRICED = Cost(0, False)


def _per_token(price: Decimal) -> int:
    return int(price * _PER_MILLION_TO_PICO_PER_TOKEN)


def _per_character(price_per_thousand: Decimal | None) -> int | None:
    # USD per thousand characters -> picodollars per character (10**12 / 10**3).
    return None if price_per_thousand is None else _per_request(price_per_thousand)


def _per_thousand(price_per_thousand: Decimal | None) -> int | None:
    # USD per thousand units -> picodollars per unit.
    return None if price_per_thousand is None else _per_request(price_per_thousand)


def _per_minute(price: Decimal | None) -> int | None:
    # USD per minute -> picodollars per minute.
    return None if price is None else int(price * 10**12)


def _per_request(price_per_thousand: Decimal) -> int:
    return int(price_per_thousand * _PER_THOUSAND_TO_PICO_PER_REQUEST)


def token_prices(
    price: ModelPrice,
    server_tools_per_thousand: Mapping[str, Decimal] | None = None,
    inference_geos: Mapping[str, Decimal] | None = None,
) -> TokenPrices:
    """A model's prices; ``server_tools_per_thousand`` is the table's price of each server
    tool for all models, which the model's own prices override tool by tool, and a
    service tier's entry overrides those in turn (a web search is not billed by tier
    unless the table says so). ``inference_geos``: the table's multiplier of each
    geography, which the model's own override geography by geography; every entry of
    the model (tiers, long context) is multiplied alike."""
    table = server_tools_per_thousand or {}
    models = {**table, **price.server_tools_per_thousand}
    geos = {
        name: int(multiplier * _MULTIPLIER_SCALE)
        for name, multiplier in {**(inference_geos or {}), **price.inference_geos}.items()
    }
    tiers = {
        name: _entry_prices(tier, models, {}, geos) for name, tier in price.service_tiers.items()
    }
    return _entry_prices(price, table, tiers, geos)


def _entry_prices(
    price: TierPrice,
    tools: Mapping[str, Decimal],
    tiers: Mapping[str, TokenPrices],
    geos: Mapping[str, int],
) -> TokenPrices:
    """One price entry (a model's own or a tier's) in picodollars; its server tool prices
    override ``tools`` (the table's, or for a tier the model's) tool by tool. Its
    long-context prices keep its server tool prices: a search costs the same after a
    long prompt."""
    server_tools = {
        name: _per_request(each)
        for name, each in {**tools, **price.server_tools_per_thousand}.items()
    }
    long = price.long_context
    long_prices = None
    if long is not None:
        long_prices = LongContextPrices(
            long.above_input_tokens, _token_prices(long, server_tools, geos=geos)
        )
    return _token_prices(price, server_tools, tiers, long_prices, geos)


def _token_prices(
    price: PerTokenPrice,
    server_tools: Mapping[str, int],
    tiers: Mapping[str, TokenPrices] | None = None,
    long_context: LongContextPrices | None = None,
    geos: Mapping[str, int] | None = None,
) -> TokenPrices:
    return TokenPrices(
        input=_per_token(price.input_per_million),
        cached_input=_per_token(price.cached_input),
        output=_per_token(price.output_per_million),
        cache_write_input=_per_token(price.cache_write_input),
        cache_write_1h_input=_per_token(price.cache_write_1h_input),
        server_tools=server_tools,
        tiers=tiers or {},
        long_context=long_context,
        geos=geos or {},
        audio_input=_per_token(price.audio_input),
        cached_audio_input=_per_token(price.cached_audio_input),
        audio_output=_per_token(price.audio_output),
        image_output=_per_token(price.image_output),
        image_input=_per_token(price.image_input),
        image_cached_input=_per_token(price.image_cached_input),
        input_per_character=_per_character(price.input_per_thousand_characters),
        audio_input_per_minute=_per_minute(price.audio_input_per_minute),
        search_unit=_per_thousand(price.search_units_per_thousand),
    )


def cost_of(usage: Usage, prices: TokenPrices | None, inference_geo: str | None = None) -> Cost:
    """The cost of one request's usage: prompt tokens read from the provider's cache at
    the cached-input price, written to its 1-hour cache at the 1-hour cache-write price,
    written to it otherwise at the cache-write price, the rest at the input price;
    completion tokens at the output price; each server tool request at its tool's price.
    All at the long-context prices when the prompt (cache reads and writes included) is
    above their threshold: the provider bills the whole request at them, not only the
    tokens past it; a request of several sampling steps (Anthropic's compaction, then the
    answer) is judged step by step, each on its own prompt. The tokens' cost times the
    multiplier of ``inference_geo``, the geography the provider ran the request in, when
    the prices have one.

    Each part is clamped to what the prompt has left, so a malformed report never bills
    more prompt tokens than the prompt has, nor any twice. A server tool without a price
    adds nothing and makes the cost ``priced=False``: the bill is short and says so; so do
    searches the provider billed (a rerank's) that the prices have no price for."""
    if prices is None:
        return UNPRICED
    tokens, long_context = 0, False
    # Each sampling step is judged on its own prompt (Anthropic's compaction step reads
    # the whole conversation, the answer the summary): their sum is no prompt the model
    # read, and would bill two short steps at the long-context price.
    for part in _sampling_steps(usage) if prices.long_context is not None else (usage,):
        entry = prices
        long = prices.long_context
        if long is not None and part.prompt_tokens > long.above_input_tokens:
            entry, long_context = long.prices, True
        tokens += _token_cost(part, entry)
    multiplier = prices.geos.get(inference_geo) if inference_geo is not None else None
    if multiplier is not None:
        tokens = _multiplied(tokens, multiplier)
    tools = sum(
        max(count, 0) * prices.server_tools.get(name, 0)
        for name, count in usage.server_tool_requests.items()
    )
    short = unpriced_server_tools(usage, prices) or unpriced_searches(usage, prices)
    return Cost(tokens + tools, not short, long_context)


def _token_cost(usage: Usage, prices: TokenPrices) -> int:
    """The picodollars of ``usage``'s tokens at ``prices``, each part clamped."""
    if (
        usage.prompt_tokens >= 0
        and usage.completion_tokens >= 0
        and not (
            usage.cached_tokens or usage.cache_write_tokens or usage.cache_write_1h_tokens
            or usage.audio_tokens or usage.cached_audio_tokens or usage.image_tokens
            or usage.audio_output_tokens or usage.image_output_tokens
        )
    ):  # fmt: skip
        # Most requests: text in, text out, no cache. ``_parted_token_cost``'s result for
        # them (its parts all clamp to 0), without its dozen clamps (about 1 us).
        characters = usage.billable_characters
        searches = usage.search_units
        if prices.input_per_character is not None and characters is not None:
            prompt = max(characters, 0) * prices.input_per_character
        elif prices.search_unit is not None and searches is not None:
            # A rerank billed by the searches the provider counted (Cohere), not tokens.
            prompt = max(searches, 0) * prices.search_unit
        else:
            prompt = usage.prompt_tokens * prices.input
        return prompt + usage.completion_tokens * prices.output
    return _parted_token_cost(usage, prices)


def _parted_token_cost(usage: Usage, prices: TokenPrices) -> int:
    """``_token_cost`` of a usage with parts priced apart (cache reads and writes, audio,
    images): each part clamped within what is left of its whole."""
    cached = _part(usage.cached_tokens, usage.prompt_tokens)
    written = _part(usage.cache_write_tokens, usage.prompt_tokens - cached)
    # The 1-hour part is what the provider named as such; the other writes are 5-minute.
    written_1h = _part(usage.cache_write_1h_tokens, written)
    uncached = usage.prompt_tokens - cached - written
    # The audio parts (Gemini's modality counts, OpenAI's audio_tokens), each within the
    # part it is of.
    cached_audio = _part(usage.cached_audio_tokens, cached)
    audio = _part(usage.audio_tokens - cached_audio, uncached)
    audio_price = prices.input if prices.audio_input is None else prices.audio_input
    cached_audio_price = prices.cached_input
    if prices.cached_audio_input is not None:
        cached_audio_price = prices.cached_audio_input
    # The images of the prompt (OpenAI's GPT Image models), those read from the cache
    # within what its cached audio leaves, the others within what its audio leaves.
    cached_image = _part(usage.cached_image_tokens, cached - cached_audio)
    image = _part(usage.image_tokens - cached_image, uncached - audio)
    image_price = prices.input if prices.image_input is None else prices.image_input
    cached_image_price = prices.cached_input
    if prices.image_cached_input is not None:
        cached_image_price = prices.image_cached_input
    prompt = (
        (uncached - audio - image) * prices.input + audio * audio_price + image * image_price
        + (cached - cached_audio - cached_image) * prices.cached_input
        + cached_audio * cached_audio_price + cached_image * cached_image_price
        + (written - written_1h) * prices.cache_write_input
        + written_1h * prices.cache_write_1h_input
    )  # fmt: skip
    characters = usage.billable_characters
    if prices.input_per_character is not None and characters is not None:
        # Billed by the characters the provider counted (Vertex's embeddings), not tokens.
        prompt = max(characters, 0) * prices.input_per_character
    seconds = usage.audio_seconds
    if prices.audio_input_per_minute is not None and seconds is not None:
        # Billed by the seconds of audio the provider counted (whisper-1), not by the
        # tokens they are counted as: to the millisecond, rounded to the picodollar.
        millis = round(max(seconds, 0.0) * 1000)
        prompt += -audio * audio_price + (millis * prices.audio_input_per_minute + 30_000) // 60_000
    # The audio part of the completion (OpenAI's audio models, Gemini's TTS), within it.
    audio_output = _part(usage.audio_output_tokens, usage.completion_tokens)
    audio_output_price = prices.output if prices.audio_output is None else prices.audio_output
    # Its images (Gemini's image models), within what the audio leaves: no token twice.
    image_output = _part(usage.image_output_tokens, usage.completion_tokens - audio_output)
    image_output_price = prices.output if prices.image_output is None else prices.image_output
    completion = (
        (usage.completion_tokens - audio_output - image_output) * prices.output
        + audio_output * audio_output_price
        + image_output * image_output_price
    )
    return prompt + completion


def without_image_generation(usage: Usage) -> Usage:
    """``usage`` without the image generation tool's parts: the answering model's own
    counts, which its prices bill."""
    generation = usage.image_generation
    if generation is None:
        return usage
    prompt = max(usage.prompt_tokens - max(generation.input_tokens, 0), 0)
    completion = max(usage.completion_tokens - max(generation.output_tokens, 0), 0)
    return replace(
        usage,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=max(usage.cached_tokens - max(generation.cached_tokens, 0), 0),
        image_generation=None,
    )


def image_generation_usage(generation: ImageGeneration) -> Usage:
    """The image generation tool's counts as the image model's own usage: its prompt
    (its images and its cache reads apart) and its completion (its pictures apart)."""
    prompt = max(generation.input_tokens, 0)
    completion = max(generation.output_tokens, 0)
    return Usage(
        prompt,
        completion,
        prompt + completion,
        cached_tokens=generation.cached_tokens,
        cached_image_tokens=generation.cached_image_tokens,
        image_tokens=generation.input_image_tokens,
        image_output_tokens=generation.output_image_tokens,
    )


def _sampling_steps(usage: Usage) -> tuple[Usage, ...]:
    """The request's sampling steps, each with its own counts: its compaction steps
    (``Usage.steps``), then the answer's own, the rest of the counts. A usage without
    steps is one step."""
    if not usage.steps:
        return (usage,)
    steps = usage.steps

    def rest(field: str) -> int:
        reported = int(getattr(usage, field))
        return max(reported - sum(int(getattr(step, field)) for step in steps), 0)

    answer = replace(
        usage,
        prompt_tokens=rest("prompt_tokens"),
        completion_tokens=rest("completion_tokens"),
        total_tokens=rest("total_tokens"),
        cached_tokens=rest("cached_tokens"),
        cache_write_tokens=rest("cache_write_tokens"),
        cache_write_1h_tokens=rest("cache_write_1h_tokens"),
        steps=(),
    )
    return (*steps, answer)


def _multiplied(picousd: int, multiplier: int) -> int:
    """``picousd`` times a multiplier in ten-thousandths, to the nearest picodollar (half
    to even): a 1.1x price of six decimals may fall between two picodollars per token, so
    the request's token cost is rounded once, not each token's."""
    exact = Decimal(picousd * multiplier) / _MULTIPLIER_SCALE
    return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))


def _used_nothing(usage: Usage) -> bool:
    """No token and no server tool request: a usage every price bills at 0."""
    return (
        usage.prompt_tokens <= 0
        and usage.completion_tokens <= 0
        and all(count <= 0 for count in usage.server_tool_requests.values())
    )


def unpriced_server_tools(usage: Usage, prices: TokenPrices) -> list[str]:
    """The server tools the usage names with requests that the prices do not cover."""
    return [
        name
        for name, count in usage.server_tool_requests.items()
        if count > 0 and name not in prices.server_tools
    ]


def unpriced_searches(usage: Usage, prices: TokenPrices) -> bool:
    """Whether the usage holds searches its provider billed (a rerank's) that the prices
    have no price for: billed by the gateway's estimate of its tokens, not as the bill."""
    searches = usage.search_units
    return searches is not None and searches > 0 and prices.search_unit is None


def _part(reported: int, available: int) -> int:
    """A reported count of a part of the tokens, within 0 and what is left of them."""
    return min(max(reported, 0), available)


# The price of a model no price names that is free by its kind (a moderation model).
_FREE = ModelPrice(input_per_million=Decimal(0), output_per_million=Decimal(0))


class PriceTable:
    """Prices by every name a request may carry: model names, their aliases, other names."""

    def __init__(self, pricing: PricingConfig, models: tuple[ModelConfig, ...] = ()) -> None:
        self._by_name: dict[str, TokenPrices] = {}
        # Server tools already warned about as unpriced (once each, not per request).
        self._warned_tools: set[str] = set()
        # (model, tier) pairs warned about as served at a tier without its own prices.
        self._warned_tiers: set[tuple[str, str]] = set()
        # (model, geography) pairs warned about as run where no multiplier prices them.
        self._warned_geos: set[tuple[str, str]] = set()
        for name, price in pricing.models.items():
            self._by_name[name] = token_prices(
                price, pricing.server_tools_per_thousand, pricing.inference_geos
            )
        self._by_comparable = {comparable(name): each for name, each in self._by_name.items()}
        # A price given for a model (or one of its aliases) covers all its names,
        # unless a name has a price of its own. Given under another spelling of a name
        # (case, a Bedrock profile's base id), it covers them too: the name itself was
        # priced so at request time, its aliases cost 0 and the model was listed unpriced.
        for model in models:
            names = (model.name, *model.aliases)
            found = next((self._by_name[n] for n in names if n in pricing.models), None)
            if found is None:
                found = next((p for n in names if (p := self.prices(n)) is not None), None)
            if found is None and model.kind == "moderation":  # ModelKind.MODERATION
                # OpenAI's moderation is free: a moderation model no price names costs
                # nothing and is priced so, not flagged unpriced in every report.
                found = token_prices(
                    _FREE, pricing.server_tools_per_thousand, pricing.inference_geos
                )
            if found is None:
                continue
            for name in names:
                self._by_name.setdefault(name, found)
        # Another spelling of a priced name (case, surrounding spaces) that a route's
        # provider sent upstream as written: priced as the name it spells.
        self._by_comparable = {comparable(name): each for name, each in self._by_name.items()}
        self.unpriced_models = tuple(
            model.name
            for model in models
            if not any(n in self._by_name for n in (model.name, *model.aliases))
        )

    def prices(self, model: str | None) -> TokenPrices | None:
        if not model:
            return None
        found = self._by_name.get(model)
        if found is not None:
            return found
        # Another spelling: case and spaces, then a Bedrock model's other ids (an
        # inference profile's, an ARN's), each read as the model it names.
        for spelling in bedrock_spellings(comparable(model)):
            found = self._by_comparable.get(spelling)
            if found is not None:
                return found
        return None

    def cost(
        self,
        model: str | None,
        usage: Usage,
        service_tier: str | None = None,
        inference_geo: str | None = None,
    ) -> Cost:
        """The cost of ``usage`` at ``model``'s prices, those of ``service_tier`` (the tier
        the provider reported) when the table prices that tier apart, times the multiplier
        of ``inference_geo`` (the geography it reported running the request in)."""
        generation = usage.image_generation
        if generation is not None:
            # The tool's pictures are priced at the image model's entry, apart (below).
            usage = without_image_generation(usage)
        cost = self._answer_cost(model, usage, service_tier, inference_geo)
        if generation is None:
            return cost
        return self._with_image_generation(cost, generation)

    def _with_image_generation(self, cost: Cost, generation: ImageGeneration) -> Cost:
        """``cost`` with the pictures of the image generation tool at the image model's
        own prices; unpriced (flagged, warned once per model) when it has none."""
        if generation.input_tokens <= 0 and generation.output_tokens <= 0:
            return cost
        prices = self.prices(generation.model)
        if prices is None:
            self._warn_unpriced_image_model(generation.model)
            return replace(cost, priced=False)
        drawn = cost_of(image_generation_usage(generation), prices)
        return replace(cost, picousd=cost.picousd + drawn.picousd)

    def _answer_cost(
        self,
        model: str | None,
        usage: Usage,
        service_tier: str | None,
        inference_geo: str | None,
    ) -> Cost:
        prices = self.prices(model)
        if prices is None and usage.reported_cost_picousd is not None:
            # A model the table does not price, whose provider said what it charged
            # (OpenRouter): that charge. A model the table prices keeps the table's price.
            return Cost(usage.reported_cost_picousd, True)
        if prices is None and _used_nothing(usage):
            # Refused, or failed before it used anything: nothing to bill at any price,
            # so the bill is not short (unpriced_requests counts what lacks a price).
            return FREE
        if prices is not None:
            tier = service_tier
            if tier is not None and tier not in prices.tiers and tier not in STANDARD_TIERS:
                self._warn_unpriced_tier(model, tier)
            geo = inference_geo
            if geo is not None and geo not in prices.geos and geo not in STANDARD_GEOS:
                self._warn_unpriced_geo(model, geo)
            prices = prices.at_tier(service_tier)
        cost = cost_of(usage, prices, inference_geo)
        if prices is not None and not cost.priced:
            self._warn_unpriced_tools(model, unpriced_server_tools(usage, prices))
            if unpriced_searches(usage, prices):
                self._warn_unpriced_searches(model)
        return cost

    def _warn_unpriced_tier(self, model: str | None, tier: str) -> None:
        """A priced model served at a tier other than the standard one, which the table
        does not price apart: billed at the model's own price, which may be double a flex
        request's or half a priority one's. Said once per model and tier."""
        if model is None:
            return
        key = (model, tier)
        if key in self._warned_tiers or len(self._warned_tiers) >= _MAX_WARNED_TOOLS:
            return
        self._warned_tiers.add(key)
        log.warning(
            "model %r was served at service tier %r, which pricing does not price apart: "
            "such requests are billed at the model's own price; give the tier its prices "
            "in pricing.models.<model>.service_tiers (docs/chargeback.md#service-tiers)",
            model,
            tier,
        )

    def _warn_unpriced_geo(self, model: str | None, geo: str) -> None:
        """A priced model run in a geography the table gives no multiplier (Anthropic's
        US-only inference costs 1.1x): billed at the model's own price. Said once per
        model and geography."""
        if model is None:
            return
        key = (model, geo)
        if key in self._warned_geos or len(self._warned_geos) >= _MAX_WARNED_TOOLS:
            return
        self._warned_geos.add(key)
        log.warning(
            "model %r was run in inference geography %r, which pricing does not price "
            "apart: such requests are billed at the model's own price; give the geography "
            "its multiplier in pricing.inference_geos or pricing.models.<model>."
            "inference_geos (docs/chargeback.md#inference-geography)",
            model,
            geo,
        )

    def _warn_unpriced_image_model(self, model: str | None) -> None:
        """The image generation tool drew with a model the table does not price: its
        pictures cost nothing in the bill, which says so. Said once per model."""
        key = f"image model {model!r}"
        if key in self._warned_tools or len(self._warned_tools) >= _MAX_WARNED_TOOLS:
            return
        self._warned_tools.add(key)
        log.warning(
            "the image generation tool drew pictures with image model %r, which pricing "
            "does not price: such requests are billed without them and flagged "
            "cost_priced=false; give the model a price in pricing.models "
            "(docs/chargeback.md#image-generation)",
            model,
        )

    def _warn_unpriced_searches(self, model: str | None) -> None:
        """A rerank model its provider billed by searches, which its price entry does not
        price: said once per model."""
        key = f"searches of {model!r}"
        if key in self._warned_tools or len(self._warned_tools) >= _MAX_WARNED_TOOLS:
            return
        self._warned_tools.add(key)
        log.warning(
            "the provider billed model %r by search units (a rerank), which its price "
            "entry does not price: such requests are billed by the gateway's estimate of "
            "their tokens and flagged cost_priced=false; give it search_units_per_thousand "
            "in pricing.models (docs/providers.md#rerank)",
            model,
        )

    def _warn_unpriced_tools(self, model: str | None, tools: list[str]) -> None:
        for tool in tools:
            if tool in self._warned_tools or len(self._warned_tools) >= _MAX_WARNED_TOOLS:
                continue
            self._warned_tools.add(tool)
            log.warning(
                "the provider reports requests of server tool %r (model %r) that pricing "
                "does not price: such requests are billed without them and flagged "
                "cost_priced=false; give it a price in pricing.server_tools_per_thousand "
                "(docs/chargeback.md)",
                tool,
                model,
            )


_PICO_PER_USD = 10**12


def usd(picousd: int) -> Decimal:
    """Picodollars as an exact Decimal number of USD, at any size: built from text, which
    no context rounds (arithmetic such as ``scaleb`` rounds to 28 digits)."""
    return Decimal(f"{picousd}E-12")


def usd_float(picousd: int) -> float:
    """The float nearest the exact amount. Its shortest repr (what JSON and Prometheus
    print) is the exact decimal while the amount has at most 15 significant digits,
    i.e. below $1,000 at picodollar precision."""
    # int / int is correctly rounded in Python: the same float as via Decimal, cheaper.
    return picousd / _PICO_PER_USD


def usd_text(picousd: int) -> str:
    """The exact amount as plain decimal text, at least two decimals: '0.00015', '12.50'."""
    text = format(usd(picousd), "f")
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{whole}.{fraction}"


def picousd_of(text: str) -> int:
    """The picodollars of a USD amount as ``usd_text`` writes it, exactly, at any size."""
    whole, _, fraction = text.strip().partition(".")
    if len(fraction) > 12 or (fraction and not fraction.isdigit()):
        raise ValueError(f"not an amount of whole picodollars: {text!r}")
    return int(whole + fraction.ljust(12, "0"))


def failover_members(ctx: RequestContext) -> set[str]:
    """The models of the request's failover chain (its primary's and fallbacks' names)."""
    chain = ctx.runtime.failover.get(ctx.failover_model or "", {})
    return {name for name, _ in chain.values()}


def request_cost(ctx: RequestContext) -> Cost:
    """The cost of a finished request, computed once and kept on the context, so the log
    line, the counter, the rollup and Envoy's metadata carry the very same number.

    The service tier and the inference geography the provider reported are kept beside it
    (``ctx.service_tier``, ``ctx.inference_geo``, the log line's), so the line names what
    its cost was priced at."""
    if ctx.cost is None:
        ctx.service_tier = answered_tier(ctx)
        ctx.inference_geo = reported_inference_geo(ctx.translator)
        ctx.cost = usage_cost(ctx, ctx.usage, ctx.service_tier)
    return ctx.cost


def answered_tier(ctx: RequestContext) -> str | None:
    """The service tier the request's answer was served at, so far: the one its
    translator read (or seeded with the tier asked, a Bedrock answer's), else the one the
    attempt Envoy dropped for its size asked for (``ctx.tier_asked``)."""
    return reported_service_tier(ctx.translator) or ctx.tier_asked


def usage_cost(ctx: RequestContext, usage: Usage, tier: str | None) -> Cost:
    """What ``usage`` of the request costs at ``tier``: ``request_cost``'s pricing, for
    counts the request is not charged yet (a stream's estimate, before ``done`` makes it
    the request's usage). The geography is the one the answer named (so far)."""
    if ctx.model is None:
        # Refused before a model was named: nothing to price.
        return FREE
    model: str | None = ctx.model
    if ctx.failover_model is not None and ctx.answered_model in failover_members(ctx):
        # The chain member that answered is what the provider bills, priced or not
        # (an unpriced fallback is unpriced, not billed at the primary's price).
        model = ctx.answered_model
    geo = reported_inference_geo(ctx.translator)
    return ctx.runtime.prices.cost(model, usage, tier, geo)

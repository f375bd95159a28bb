"""The ``pricing`` section: what each model costs, in USD per million tokens, and what the
providers' server tools cost, in USD per 1,000 requests.

Prices are exact decimals (never binary floats) with at most six decimal
places, so every request's cost is a whole number of picodollars (see
``extproc.chargeback.pricing``). A price names a gateway model or one of its
aliases (aliases of a priced model share its price), or any model name the
gateway may serve through a prefix or a route's provider.

Server tools (Anthropic's web search) are priced by the name the provider's usage
report gives them (``web_search`` for ``web_search_requests``): once for all models in
``pricing.server_tools_per_thousand``, and per model, tool by tool, in a model's own
``server_tools_per_thousand``. A tool Anthropic adds later needs a price, not code.

Service tiers: a provider may serve a request at another tier than its standard one and
bill it at that tier's price (OpenAI's ``flex`` at about half the standard price, its
``priority`` above it; Anthropic's Priority Tier). A model's ``service_tiers`` gives the
full price entry of each such tier, by the name the provider's answer reports
(``chargeback.pricing`` picks it). The standard tier's names (``default``, ``standard``,
``auto``) are the model's own price and cannot have an entry.

Long context: some providers bill a request whose prompt is above a number of tokens at
higher prices, the whole request (Anthropic's Claude Sonnet 4 and 4.5 with the 1M-token
window above 200K: 2x input, 1.5x output; Gemini 2.5 Pro above 200K). A model's (or a
tier's) ``long_context`` gives that threshold and the prices above it. Its cache prices
must be given wherever the entry it belongs to gives its own, and a tier of a model that
has one must have its own: left to a default, either would bill long prompts at a price
nobody set.

Inference geography: Anthropic bills a request it ran in one geography only (its
``inference_geo``, ``us``) at a multiple of the model's price (1.1x on every kind of
token, cache reads and writes included, for Claude Opus 4.6 and later), and its answer's
``usage.inference_geo`` says where it ran. ``pricing.inference_geos`` gives the
multiplier of each geography for all models, a model's own ``inference_geos`` overrides
it geography by geography. ``global``, the default geography, is billed at the model's
own price and cannot have an entry.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from extproc.config.section import Section as _Section

# Six decimals of a USD-per-million price are one picodollar per token (and of a
# USD-per-thousand price, a thousand picodollars per request).
PRICE_DECIMALS = 6
Price = Annotated[Decimal, Field(ge=0, le=1_000_000)]
# A server tool as the provider's usage names it, without "_requests" (web_search).
ServerToolName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
ServerToolPrices = dict[ServerToolName, Price]
# A service tier as the provider's answer names it (OpenAI "flex", Anthropic "priority").
TIER_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
ServiceTierName = Annotated[str, Field(pattern=TIER_NAME_PATTERN)]
# The names providers give their standard tier (OpenAI "default", and "auto" as asked;
# Anthropic "standard"; Groq "on_demand"): billed at the model's own price, so an entry
# would be a second, contradicting price for the same requests.
STANDARD_TIERS = frozenset({"default", "standard", "auto", "on_demand"})
# An inference geography as Anthropic's usage names it ("us").
InferenceGeoName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
# Anthropic's default geography, billed at the model's own price.
STANDARD_GEOS = frozenset({"global"})
# A geography's price multiplier (1.1): four decimals at most, so a request's cost at it
# is rounded once, to the picodollar (chargeback.pricing).
MULTIPLIER_DECIMALS = 4
GeoMultiplier = Annotated[Decimal, Field(gt=0, le=100)]
GeoMultipliers = dict[InferenceGeoName, GeoMultiplier]
# The prompt-cache prices, which default from the input price when left out.
_CACHE_PRICE_KEYS = (
    "cached_input_per_million",
    "cache_write_input_per_million",
    "cache_write_1h_input_per_million",
)
# The audio prices (Gemini bills audio input above text, image and video; OpenAI's audio
# models bill audio input and output far above text).
_AUDIO_PRICE_KEYS = (
    "audio_input_per_million",
    "cached_audio_input_per_million",
    "audio_output_per_million",
)
# The image prices: Gemini's image models bill an image's tokens about 12x text; OpenAI's
# GPT Image models bill the images of the prompt and of the answer apart from text too.
_IMAGE_PRICE_KEYS = (
    "image_input_per_million",
    "image_cached_input_per_million",
    "image_output_per_million",
)
# The prices an entry may give apart from its input price, which its long_context must
# then give too.
_APART_PRICE_KEYS = (*_CACHE_PRICE_KEYS, *_AUDIO_PRICE_KEYS, *_IMAGE_PRICE_KEYS)
_TOKEN_PRICE_KEYS = ("input_per_million", "output_per_million", *_APART_PRICE_KEYS)


def _exact(value: Decimal) -> Decimal:
    """A price with at most PRICE_DECIMALS decimals, so costs are whole picodollars."""
    if not value.is_finite():
        raise ValueError("must be a finite number")
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -PRICE_DECIMALS:
        raise ValueError(f"at most {PRICE_DECIMALS} decimal places")
    return value


def _geo_multipliers(value: GeoMultipliers) -> GeoMultipliers:
    """Multipliers of four decimals at most, none for the default geography."""
    standard = sorted(STANDARD_GEOS.intersection(value))
    if standard:
        raise ValueError(
            f"{standard[0]!r} is the default inference geography, billed at the model's "
            "own price: leave it out"
        )
    for geo, multiplier in value.items():
        if not multiplier.is_finite():
            raise ValueError(f"{geo}: must be a finite number")
        exponent = multiplier.normalize().as_tuple().exponent
        if isinstance(exponent, int) and exponent < -MULTIPLIER_DECIMALS:
            raise ValueError(f"{geo}: at most {MULTIPLIER_DECIMALS} decimal places")
    return value


def _exact_tool_prices(prices: ServerToolPrices) -> ServerToolPrices:
    for value in prices.values():
        _exact(value)
    return prices


class PerTokenPrice(_Section):
    """USD per million tokens of each kind of token: the keys every price entry has."""

    input_per_million: Price
    output_per_million: Price
    # Prompt tokens the provider served from its prompt cache. Default: the input price.
    cached_input_per_million: Price | None = None
    # Prompt tokens the provider wrote to its prompt cache (Anthropic and Bedrock bill
    # them above the input price: 1.25x for Claude's 5-minute cache). Default: the
    # input price.
    cache_write_input_per_million: Price | None = None
    # Prompt tokens written to Claude's 1-hour cache (2x the input price). Default: the
    # cache-write price, so a table written before the split bills as it did.
    cache_write_1h_input_per_million: Price | None = None
    # Prompt tokens of audio (Gemini: promptTokensDetails' AUDIO entry; OpenAI:
    # prompt_tokens_details.audio_tokens), which Gemini bills above text, image and video
    # (2.5 Flash: 1.00 against 0.30), OpenAI's audio models far above text (gpt-audio:
    # 32.00 against 2.50). Default: the input price.
    audio_input_per_million: Price | None = None
    # Audio prompt tokens read from the provider's cache. Default: the audio input price
    # when the entry gives no cached_input_per_million (required when it gives both).
    cached_audio_input_per_million: Price | None = None
    # Completion tokens of audio (OpenAI: completion_tokens_details.audio_tokens; Gemini:
    # candidatesTokensDetails' AUDIO entry), which OpenAI's audio models bill far above
    # text (gpt-audio: 64.00 against 10.00). Default: the output price.
    audio_output_per_million: Price | None = None
    # Prompt tokens of images that a model bills apart from text (OpenAI's GPT Image
    # models: the images given to edit, input_tokens_details.image_tokens; gpt-image-1:
    # 10.00 against 5.00). Default: the input price.
    image_input_per_million: Price | None = None
    # Prompt tokens of images read from the model's cache (gpt-image-1: 2.50 against
    # 10.00; the Responses API's image tool reports them, tool_usage.image_gen's
    # cached_tokens_details.cached_image_tokens). Default: the image input price when
    # the entry gives one (no discount nobody set), else the cached input price.
    image_cached_input_per_million: Price | None = None
    # Completion tokens of images (Gemini: candidatesTokensDetails' IMAGE entry; OpenAI's
    # GPT Image models: the picture), which image models bill far above text (2.5 Flash
    # Image: 30.00 against 2.50). Default: the output price.
    image_output_per_million: Price | None = None
    # USD per 1,000 prompt characters, for a model its provider bills by characters
    # (Vertex's text-embedding-005: 0.000025): the prompt is billed by the characters the
    # answer reports (billableCharacterCount), and by its tokens at input_per_million when
    # it reports none. Default: none, the prompt is billed by its tokens.
    input_per_thousand_characters: Price | None = None
    # USD per minute of audio, for a model its provider bills by the audio's duration
    # (OpenAI's whisper-1: 0.006): a speech-to-text answer that reports seconds (usage
    # type duration, a verbose_json's duration) has its audio billed by them, to the
    # millisecond, instead of its tokens (the ten a second audio_api counts). Default:
    # none, billed by those tokens at the audio input price.
    audio_input_per_minute: Price | None = None
    # USD per 1,000 search units, for a rerank model its provider bills by searches
    # (Cohere's rerank-v3.5: 2.00; a search unit is one query of up to 100 documents): a
    # rerank answer that reports them (meta.billed_units.search_units) is billed by them
    # instead of its tokens, and one that reports nothing by the searches its documents
    # make. Default: none, a rerank is billed by its tokens at input_per_million.
    search_units_per_thousand: Price | None = None

    @field_validator(
        *_TOKEN_PRICE_KEYS,
        "input_per_thousand_characters",
        "audio_input_per_minute",
        "search_units_per_thousand",
    )
    @classmethod
    def _six_decimals(cls, value: Decimal | None) -> Decimal | None:
        return None if value is None else _exact(value)

    @model_validator(mode="after")
    def _cached_audio_price(self) -> Self:
        """An entry that prices audio and cache reads apart prices cached audio too:
        either default (the audio price, the cached text price) would be a price nobody
        set, ten times Gemini's bill for cached audio, or a third of it."""
        if (
            self.audio_input_per_million is not None
            and self.cached_input_per_million is not None
            and self.cached_audio_input_per_million is None
        ):
            raise ValueError(
                "give cached_audio_input_per_million too: the entry prices audio and cache "
                "reads apart, so neither default fits audio read from the cache"
            )
        return self

    @property
    def cached_input(self) -> Decimal:
        if self.cached_input_per_million is None:
            return self.input_per_million
        return self.cached_input_per_million

    @property
    def audio_input(self) -> Decimal:
        if self.audio_input_per_million is None:
            return self.input_per_million
        return self.audio_input_per_million

    @property
    def cached_audio_input(self) -> Decimal:
        if self.cached_audio_input_per_million is not None:
            return self.cached_audio_input_per_million
        if self.audio_input_per_million is None:
            # No audio price: cached audio is cached input like any other.
            return self.cached_input
        return self.audio_input_per_million

    @property
    def audio_output(self) -> Decimal:
        if self.audio_output_per_million is None:
            return self.output_per_million
        return self.audio_output_per_million

    @property
    def image_input(self) -> Decimal:
        if self.image_input_per_million is None:
            return self.input_per_million
        return self.image_input_per_million

    @property
    def image_cached_input(self) -> Decimal:
        if self.image_cached_input_per_million is not None:
            return self.image_cached_input_per_million
        if self.image_input_per_million is None:
            return self.cached_input  # images are input like any other: cached as text
        return self.image_input_per_million

    @property
    def image_output(self) -> Decimal:
        if self.image_output_per_million is None:
            return self.output_per_million
        return self.image_output_per_million

    @property
    def cache_write_input(self) -> Decimal:
        if self.cache_write_input_per_million is None:
            return self.input_per_million
        return self.cache_write_input_per_million

    @property
    def cache_write_1h_input(self) -> Decimal:
        if self.cache_write_1h_input_per_million is None:
            return self.cache_write_input
        return self.cache_write_1h_input_per_million


class LongContextPrice(PerTokenPrice):
    """The prices of a request whose prompt is above ``above_input_tokens``, all of it.

    Whole, as a tier's entry: its unset cache prices follow its own input price. Server
    tools cost the same at any prompt length, so it has none of its own."""

    # The prompt as the provider counts it toward the threshold: every prompt token,
    # cache reads and writes included (Anthropic: input_tokens +
    # cache_creation_input_tokens + cache_read_input_tokens). Above it, not at it.
    above_input_tokens: int = Field(gt=0)


class TierPrice(PerTokenPrice):
    """USD per million tokens of one model: its own price, or one service tier's."""

    # USD per 1,000 requests of each server tool, when this model's differ from
    # pricing.server_tools_per_thousand (tool by tool; the others keep that price).
    server_tools_per_thousand: ServerToolPrices = {}
    # The price of requests whose prompt is above a number of tokens, when the provider
    # bills them apart. Default: none, one price at any length.
    long_context: LongContextPrice | None = None

    @field_validator("server_tools_per_thousand")
    @classmethod
    def _tool_prices(cls, value: ServerToolPrices) -> ServerToolPrices:
        return _exact_tool_prices(value)

    @field_validator("long_context")
    @classmethod
    def _long_cache_prices(
        cls, value: LongContextPrice | None, info: ValidationInfo
    ) -> LongContextPrice | None:
        """A cache price the entry gives apart, its long_context gives too: by default
        the long-context cache reads would cost the long-context input price, ten times
        Anthropic's bill for them."""
        if value is None:
            return value
        missing = [
            key
            for key in _APART_PRICE_KEYS
            if info.data.get(key) is not None and getattr(value, key) is None
        ]
        if missing:
            raise ValueError(
                f"give {', '.join(missing)} here too, as the entry it belongs to does: "
                "left out, a long-context cache, audio or image price is the long-context "
                "input (or output) price"
            )
        return value


class ModelPrice(TierPrice):
    """One model's price, and the prices of the service tiers the provider bills apart.

    A tier's entry is whole, as the model's own: its defaults (cached input, cache writes)
    follow the tier's own input price, its long_context is its own, and it has no tiers
    of its own. Its server tool prices are added to the model's, tool by tool.
    """

    # The tier the provider reports serving the request at -> that tier's price. A tier
    # reported without an entry is billed at the model's own price.
    service_tiers: dict[ServiceTierName, TierPrice] = {}
    # The geography the provider reports running the request in (Anthropic's
    # usage.inference_geo, "us") -> the multiplier of every token price there, when this
    # model's differs from pricing.inference_geos (geography by geography). It applies to
    # whichever entry priced the request (its tier's, its long-context prices).
    inference_geos: GeoMultipliers = {}

    @field_validator("inference_geos")
    @classmethod
    def _geos(cls, value: GeoMultipliers) -> GeoMultipliers:
        return _geo_multipliers(value)

    @field_validator("service_tiers")
    @classmethod
    def _no_standard_tier(
        cls, value: dict[str, TierPrice], info: ValidationInfo
    ) -> dict[str, TierPrice]:
        standard = sorted(STANDARD_TIERS.intersection(value))
        if standard:
            raise ValueError(
                f"{standard[0]!r} is the standard tier, billed at the model's own price: "
                "give that price in the model's entry, not under service_tiers"
            )
        # A tier's entry is whole, so neither price would be right for a long prompt at a
        # tier without its own: the tier's (its short price) nor the model's long one (a
        # sixth of a fast-mode bill). The operator says which, even if it is the tier's.
        if info.data.get("long_context") is not None:
            short = sorted(name for name, tier in value.items() if tier.long_context is None)
            if short:
                raise ValueError(
                    f"{short[0]!r} needs a long_context of its own, since the model prices "
                    "long prompts apart (repeat the tier's prices there to bill long "
                    "prompts at them)"
                )
        return value


class PricingConfig(_Section):
    """The price table. A model without a price costs what its provider reports charging
    (OpenRouter's ``usage.cost``), else 0, and is then reported as unpriced."""

    # Gateway model name (or alias, or any served model name) -> its price.
    models: dict[Annotated[str, Field(min_length=1, max_length=256)], ModelPrice] = {}
    # USD per 1,000 requests of each provider server tool (web_search: 10.00), for every
    # priced model. A request whose usage names a tool without a price is flagged unpriced.
    server_tools_per_thousand: ServerToolPrices = {}
    # The multiplier of every token price of a request run in one inference geography
    # (Anthropic's US-only inference: us: 1.1), for every priced model. A geography
    # reported without one is billed at the model's own price (and warned about once).
    inference_geos: GeoMultipliers = {}

    @field_validator("server_tools_per_thousand")
    @classmethod
    def _tool_prices(cls, value: ServerToolPrices) -> ServerToolPrices:
        return _exact_tool_prices(value)

    @field_validator("inference_geos")
    @classmethod
    def _geos(cls, value: GeoMultipliers) -> GeoMultipliers:
        return _geo_multipliers(value)

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
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


def _exact(value: Decimal) -> Decimal:
    """A price with at most PRICE_DECIMALS decimals, so costs are whole picodollars."""
    if not value.is_finite():
        raise ValueError("must be a finite number")
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -PRICE_DECIMALS:
        raise ValueError(f"at most {PRICE_DECIMALS} decimal places")
    return value


def _exact_tool_prices(prices: ServerToolPrices) -> ServerToolPrices:
    for value in prices.values():
        _exact(value)
    return prices


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierPrice(_Section):
    """USD per million tokens of one model: its own price, or one service tier's."""

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
    # USD per 1,000 requests of each server tool, when this model's differ from
    # pricing.server_tools_per_thousand (tool by tool; the others keep that price).
    server_tools_per_thousand: ServerToolPrices = {}

    @field_validator(
        "input_per_million",
        "output_per_million",
        "cached_input_per_million",
        "cache_write_input_per_million",
        "cache_write_1h_input_per_million",
    )
    @classmethod
    def _six_decimals(cls, value: Decimal | None) -> Decimal | None:
        return None if value is None else _exact(value)

    @field_validator("server_tools_per_thousand")
    @classmethod
    def _tool_prices(cls, value: ServerToolPrices) -> ServerToolPrices:
        return _exact_tool_prices(value)

    @property
    def cached_input(self) -> Decimal:
        if self.cached_input_per_million is None:
            return self.input_per_million
        return self.cached_input_per_million

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


class ModelPrice(TierPrice):
    """One model's price, and the prices of the service tiers the provider bills apart.

    A tier's entry is whole, as the model's own: its defaults (cached input, cache writes)
    follow the tier's own input price, and it has no tiers of its own. Its server tool
    prices are added to the model's, tool by tool.
    """

    # The tier the provider reports serving the request at -> that tier's price. A tier
    # reported without an entry is billed at the model's own price.
    service_tiers: dict[ServiceTierName, TierPrice] = {}

    @field_validator("service_tiers")
    @classmethod
    def _no_standard_tier(cls, value: dict[str, TierPrice]) -> dict[str, TierPrice]:
        standard = sorted(STANDARD_TIERS.intersection(value))
        if standard:
            raise ValueError(
                f"{standard[0]!r} is the standard tier, billed at the model's own price: "
                "give that price in the model's entry, not under service_tiers"
            )
        return value


class PricingConfig(_Section):
    """The price table. A model without a price costs 0 and is reported as unpriced."""

    # Gateway model name (or alias, or any served model name) -> its price.
    models: dict[Annotated[str, Field(min_length=1, max_length=256)], ModelPrice] = {}
    # USD per 1,000 requests of each provider server tool (web_search: 10.00), for every
    # priced model. A request whose usage names a tool without a price is flagged unpriced.
    server_tools_per_thousand: ServerToolPrices = {}

    @field_validator("server_tools_per_thousand")
    @classmethod
    def _tool_prices(cls, value: ServerToolPrices) -> ServerToolPrices:
        return _exact_tool_prices(value)

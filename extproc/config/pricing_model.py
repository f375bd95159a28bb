"""The ``pricing`` section: what each model costs, in USD per million tokens.

Prices are exact decimals (never binary floats) with at most six decimal
places, so every request's cost is a whole number of picodollars (see
``extproc.chargeback.pricing``). A price names a gateway model or one of its
aliases (aliases of a priced model share its price), or any model name the
gateway may serve through a prefix or a route's provider.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Six decimals of a USD-per-million price are one picodollar per token.
PRICE_DECIMALS = 6
Price = Annotated[Decimal, Field(ge=0, le=1_000_000)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelPrice(_Section):
    """USD per million tokens of one model."""

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

    @field_validator(
        "input_per_million",
        "output_per_million",
        "cached_input_per_million",
        "cache_write_input_per_million",
        "cache_write_1h_input_per_million",
    )
    @classmethod
    def _six_decimals(cls, value: Decimal | None) -> Decimal | None:
        if value is None:
            return None
        if not value.is_finite():
            raise ValueError("must be a finite number")
        exponent = value.normalize().as_tuple().exponent
        if isinstance(exponent, int) and exponent < -PRICE_DECIMALS:
            raise ValueError(f"at most {PRICE_DECIMALS} decimal places (USD per million tokens)")
        return value

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


class PricingConfig(_Section):
    """The price table. A model without a price costs 0 and is reported as unpriced."""

    # Gateway model name (or alias, or any served model name) -> its price.
    models: dict[Annotated[str, Field(min_length=1, max_length=256)], ModelPrice] = {}

"""A request of text alone (no cache read or write, no audio, no image) is priced by a
short rule: its prompt at the input price (or its characters at the character price),
its completion at the output price. Most requests are such; the rule must bill each of
them exactly what the general one, which clamps every part, bills.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.chargeback.pricing import TokenPrices, _parted_token_cost, _token_cost, cost_of
from extproc.context import Usage

PART_FIELDS = (
    "cached_tokens", "cache_write_tokens", "cache_write_1h_tokens", "audio_tokens",
    "cached_audio_tokens", "image_tokens", "audio_output_tokens", "image_output_tokens",
)  # fmt: skip
# Counts as reports hold them, and a few a malformed report could leave (below 0).
counts = st.integers(min_value=-3, max_value=10**9)
parts = st.one_of(st.just(0), counts)
prices = st.integers(min_value=0, max_value=10**8)
optional_prices = st.one_of(st.none(), prices)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    usage = Usage(prompt_tokens=draw(counts), completion_tokens=draw(counts))
    # Most drawn usages are text alone: the short rule's case.
    if draw(st.booleans()):
        for name in PART_FIELDS:
            setattr(usage, name, draw(parts))
    usage.billable_characters = draw(st.one_of(st.none(), counts))
    return usage


@st.composite
def price_entries(draw: st.DrawFn) -> TokenPrices:
    return TokenPrices(
        input=draw(prices), cached_input=draw(prices), output=draw(prices),
        cache_write_input=draw(prices), cache_write_1h_input=draw(prices),
        audio_input=draw(optional_prices), cached_audio_input=draw(optional_prices),
        audio_output=draw(optional_prices), image_output=draw(optional_prices),
        image_input=draw(optional_prices), input_per_character=draw(optional_prices),
    )  # fmt: skip


@settings(max_examples=2_000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(usages(), price_entries())
def test_every_usage_costs_what_the_part_by_part_rule_says(
    usage: Usage, entry: TokenPrices
) -> None:
    assert _token_cost(usage, entry) == _parted_token_cost(usage, entry)


def test_a_text_request_costs_its_prompt_and_completion_at_their_prices() -> None:
    # gpt-4o-mini's list prices: $0.15 and $0.60 per million tokens.
    entry = TokenPrices(
        input=150_000, cached_input=75_000, output=600_000,
        cache_write_input=150_000, cache_write_1h_input=150_000,
    )  # fmt: skip
    usage = Usage(prompt_tokens=120, completion_tokens=2, total_tokens=122)

    assert cost_of(usage, entry).picousd == 120 * 150_000 + 2 * 600_000  # $0.0000192

"""Vertex AI's traffic types, read as the service tiers the price table prices.

Vertex names the capacity that served a request, which sets its price: ``ON_DEMAND``
(pay as you go), ``ON_DEMAND_PRIORITY`` (Priority PayGo, at a higher rate),
``ON_DEMAND_FLEX`` (Flex PayGo, at a lower one) or ``PROVISIONED_THROUGHPUT`` (capacity
bought ahead). It says so in two places, one per API it serves Gemini through:

- Gemini's own API: ``usageMetadata.trafficType`` (``gemini_gemini``);
- its OpenAI-compatible endpoints: ``usage.extra_properties.google.traffic_type``, beside
  OpenAI's counts (``openai_openai``), where a chat completion has no ``service_tier``.

Each is read under the names the price table gives tiers (``chargeback.pricing``):
``on_demand`` (the model's own price), ``priority``, ``flex``,
``provisioned_throughput``; a type Google adds later is its name in lowercase.
``TRAFFIC_TYPE_UNSPECIFIED``, or anything that is no name of Google's enums, names none.
"""

from __future__ import annotations

import re
from typing import Any

from extproc.translators.base import service_tier_of

# A name of one of Google's enums; anything else a proxy sends names no tier.
_ENUM_NAME = re.compile(r"[A-Z][A-Z_]{0,63}")
_TIERS = {
    "ON_DEMAND": "on_demand",
    "ON_DEMAND_PRIORITY": "priority",
    "ON_DEMAND_FLEX": "flex",
    "PROVISIONED_THROUGHPUT": "provisioned_throughput",
    "TRAFFIC_TYPE_UNSPECIFIED": None,
}


def traffic_tier(traffic_type: Any) -> str | None:
    """The service tier a Vertex traffic type names, or None."""
    if not isinstance(traffic_type, str) or _ENUM_NAME.fullmatch(traffic_type) is None:
        return None
    if traffic_type in _TIERS:
        return _TIERS[traffic_type]
    return service_tier_of(traffic_type.lower())


def openai_usage_tier(usage: Any) -> str | None:
    """The service tier an OpenAI-shaped ``usage`` from Vertex names in
    ``extra_properties.google.traffic_type``, or None."""
    extra = usage.get("extra_properties") if isinstance(usage, dict) else None
    google = extra.get("google") if isinstance(extra, dict) else None
    return traffic_tier(google.get("traffic_type")) if isinstance(google, dict) else None

"""Fallbacks an image model may not use: warnings, not errors.

The Images API does not fail over (docs/providers.md#images-api): an edit's form could
not be re-made by a failover attempt, which starts from a JSON body. A model of
``kind: images`` with ``fallbacks`` is refused at load (``config.model``). A model
without a kind may be sent by the chat routes too, whose requests do fail over, so its
fallbacks are not wrong; but one the price table prices for the pictures it draws is
most likely an image model, whose Images API requests go to its own provider alone
whatever its fallbacks say. That is reported at load and by ``extproc check-config``
(``load_warnings``), so an operator who wrote them is not left to find out when the
provider fails.
"""

from __future__ import annotations

from collections.abc import Iterator

from extproc.config.model import GatewayConfig, ModelConfig, RouteApi


def image_fallback_warnings(config: GatewayConfig) -> Iterator[str]:
    if not any(route.api is RouteApi.OPENAI_IMAGES for route in config.routes):
        return  # no route serves the Images API: its fallbacks serve every request
    for index, model in enumerate(config.models):
        if model.kind is None and model.fallbacks and _draws_pictures(config, model):
            yield (
                f"models[{index}].fallbacks: {model.name!r} is priced for the pictures it"
                " draws, and the Images API does not fail over: its Images API requests go"
                " to its own provider alone (its chat requests fail over); set its kind to"
                " images to serve it on the Images API only (its fallbacks are then"
                " refused), or to chat to keep it off the Images API"
            )


def _draws_pictures(config: GatewayConfig, model: ModelConfig) -> bool:
    names = (model.name, *model.aliases, model.upstream_model)
    prices = (config.pricing.models.get(name) for name in names if name is not None)
    return any(price is not None and price.image_output_per_million for price in prices)

"""The configs the project ships price every model they serve, at the same prices.

The README sends a platform team to `docker compose up` (deploy/config/gateway.yaml)
and to the Kubernetes base (deploy/kubernetes/base/gateway.yaml), each with the
dashboard's cost panels, cost metrics and `extproc usage report`. A model without a
price costs 0 and every request for it is reported unpriced (docs/chargeback.md):
those configs had no `pricing` section, so every cost the stack showed was 0. The
prices are config/gateway.yaml's (what `make run` serves); one model has one price
in all of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.chargeback.pricing import PriceTable
from extproc.config.loader import parse_config
from extproc.config.model import GatewayConfig

DEFAULT = Path("config/gateway.yaml")
SHIPPED = [DEFAULT, Path("deploy/config/gateway.yaml"), Path("deploy/kubernetes/base/gateway.yaml")]


def shipped(path: Path) -> GatewayConfig:
    # parse_config: the schema alone (the Kubernetes config names files of its pod).
    return parse_config(path.read_text(encoding="utf-8"), str(path), {})


@pytest.mark.parametrize("path", SHIPPED, ids=str)
def test_a_shipped_config_prices_every_model_it_serves(path: Path) -> None:
    config = shipped(path)
    assert PriceTable(config.pricing, config.models).unpriced_models == ()


@pytest.mark.parametrize("path", SHIPPED[1:], ids=str)
def test_a_shipped_config_prices_a_model_as_the_default_config_does(path: Path) -> None:
    default, config = shipped(DEFAULT).pricing, shipped(path).pricing
    assert config.server_tools_per_thousand == default.server_tools_per_thousand
    for name, price in config.models.items():
        assert name in default.models, f"{path}: {name} has no price in {DEFAULT}"
        assert price == default.models[name], f"{path}: {name} priced unlike {DEFAULT}"

"""The dashboard shows how much of each model's prompts its provider's cache served.

``aigw_token_parts_total`` counts the cached and cache-written parts of the prompt
tokens, each billed at a price of its own, but the shipped dashboard read only
``tokens_consumed_total``: an operator could see a bill grow without seeing that a
prompt cache had stopped hitting (a changed system prompt, a TTL too short). The panel
divides each part by the model's prompt tokens, summed across replicas, filtered by the
dashboard's group and model selections; a model whose prompts used no cache reads 0,
not a gap. Evaluated with promtool over pages the gateway's own metrics code wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from extproc.telemetry.metrics import GatewayMetrics
from tests.exported_metrics import DASHBOARD, as_grafana_sends
from tests.unit.test_alerts_review import (
    MINUTES,
    Timeline,
    add_scrape,
    labels_text,
    page,
    promtool_test,
)

TITLE = "Prompt cache share by model (prompt tokens read from / written to the cache)"
CLAUDE = "claude-sonnet-4-5"
MINI = "gpt-4o-mini"


def panel() -> dict[str, Any]:
    panels = orjson.loads(DASHBOARD.read_bytes())["panels"]
    [found] = [each for each in panels if each["title"] == TITLE]
    return found  # type: ignore[no-any-return]


def two_replicas() -> Timeline:
    """Per minute: research's Claude prompts on replica a (1000 tokens, 600 read from the
    cache, 250 written to it) and b (1000, 400 read); marketing's Claude prompts on b
    (2000, none cached); research's gpt-4o-mini prompts (500, no cache) on a."""
    replica_a, replica_b = GatewayMetrics(), GatewayMetrics()
    research = ("ci-bot", "carol", "research")
    marketing = ("mk-key", "dave", "marketing")
    timeline: Timeline = {}
    for minute in range(MINUTES):
        replica_a.count_tokens(
            identity=research, model=CLAUDE, provider="anthropic", prompt=1000, completion=50,
            parts={"cached": 600, "cache_write": 250},
        )  # fmt: skip
        replica_a.count_tokens(
            identity=research, model=MINI, provider="openai", prompt=500, completion=20
        )
        replica_b.count_tokens(
            identity=research, model=CLAUDE, provider="anthropic", prompt=1000, completion=50,
            parts={"cached": 400},
        )  # fmt: skip
        replica_b.count_tokens(
            identity=marketing, model=CLAUDE, provider="anthropic", prompt=2000, completion=50
        )
        add_scrape(timeline, minute, page(replica_a.registry, "gateway-a:9464"))
        add_scrape(timeline, minute, page(replica_b.registry, "gateway-b:9464"))
    return timeline


def shares(expr: str, expected: dict[str, float]) -> dict[str, Any]:
    return {
        "expr": expr,
        "eval_time": "20m",
        "exp_samples": [
            {"labels": labels_text({"model": model}), "value": value}
            for model, value in expected.items()
        ],
    }


def test_the_usage_row_shows_each_models_prompt_cache_share_across_replicas(
    tmp_path: Path,
) -> None:
    read, written = panel()["targets"]
    exprs = [
        # Claude: 1000 of 4000 prompt tokens a minute read from the cache, 250 written;
        # gpt-4o-mini's prompts used no cache: 0, a line at the bottom, not a gap.
        shares(as_grafana_sends(read["expr"]), {CLAUDE: 0.25, MINI: 0.0}),
        shares(as_grafana_sends(written["expr"]), {CLAUDE: 0.0625, MINI: 0.0}),
        # The group selection narrows numerator and denominator alike.
        shares(as_grafana_sends(read["expr"], group="research"), {CLAUDE: 0.5, MINI: 0.0}),
        shares(as_grafana_sends(read["expr"], group="marketing"), {CLAUDE: 0.0}),
        shares(as_grafana_sends(written["expr"], model=MINI), {MINI: 0.0}),
    ]
    failed = promtool_test(tmp_path, two_replicas(), [], exprs)
    assert not failed, failed


def test_the_cache_share_panel_reads_as_a_share_of_the_prompt() -> None:
    found = panel()
    assert found["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert [target["legendFormat"] for target in found["targets"]] == [
        "{{model}} read from cache",
        "{{model}} written to cache",
    ]

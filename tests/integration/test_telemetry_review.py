"""Metric labels a client chooses, through the real Envoy, gateway, Valkey and mock provider.

A client with a valid key sends made-up model names: the ones nothing serves get a
404 and make no series; the ones a prefix sends upstream use up the label budget
(3 here), yet the configured models keep their own names on the metrics page.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
import yaml

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import running_stack, scrape, wait_for


def small_budget_config(workdir: Path) -> Path:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["telemetry"] = {"metrics": {"max_label_values": 3}}
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def small_budget(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("labels")
    with running_stack(workdir, small_budget_config(workdir)) as stack:
        yield stack


def models_of(stack: LocalStack, name: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for (sample, labels), value in scrape(stack.metrics_url).items():
        if sample == name:
            model = dict(labels)["model"]
            found[model] = found.get(model, 0.0) + value
    return found


def test_made_up_model_names_neither_blow_up_nor_hide_the_configured_models(
    small_budget: LocalStack,
) -> None:
    gpt = openai.OpenAI(base_url=f"{small_budget.base_url}/v1", api_key="team1-key",
                        max_retries=0)  # fmt: skip
    claude = anthropic.Anthropic(base_url=small_budget.base_url, api_key="team1-key",
                                 max_retries=0)  # fmt: skip
    for index in range(5):
        with pytest.raises(openai.NotFoundError):
            gpt.chat.completions.create(
                model=f"junk-{index}", messages=[{"role": "user", "content": "Hi"}]
            )
        # The `claude-` prefix sends any such name to the (mock) Anthropic, which answers.
        claude.messages.create(model=f"claude-junk-{index}", max_tokens=5,
                               messages=[{"role": "user", "content": "Hi"}])  # fmt: skip
    answer = gpt.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.usage is not None

    def counted() -> dict[str, float]:
        tokens = models_of(small_budget, "tokens_consumed_total")
        return tokens if "gpt-4o-mini" in tokens else {}

    tokens = wait_for(counted)
    assert tokens["gpt-4o-mini"] == answer.usage.total_tokens
    # The made-up names the provider served: 3 under their own names, the rest `other`.
    assert len([model for model in tokens if model.startswith("claude-junk-")]) == 3
    assert "other" in tokens
    requests = models_of(small_budget, "aigw_requests_total")
    # The 404s made no series of their own: no provider, no model label.
    assert not any(model.startswith("junk-") for model in requests)
    assert requests[""] == 5
    assert requests["gpt-4o-mini"] == 1

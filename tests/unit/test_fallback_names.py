"""A model's fallbacks name configured models by their own names. One named by an alias
is refused naming the model it is an alias of (as a model group's member is), not as an
unknown model: the config knows it, and "unknown" sent the operator looking for a typo
where there was none."""

from __future__ import annotations

import pytest

from extproc.config import ConfigError, parse_config

HEAD = """
providers:
  - {name: mock, base_url: 'http://127.0.0.1:8089/v1', api_key: k}
  - {name: other, base_url: 'http://127.0.0.1:8090/v1', api_key: k}
models:
  - {name: gpt-4o-mini, provider: other, aliases: [mini]}
model_groups:
  - {name: minis, members: [{model: gpt-4o-mini}]}
"""


def problems(models: str) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        parse_config(HEAD.replace("model_groups:", models + "model_groups:"), "test.yaml", {})
    return refused.value.problems


def test_a_fallback_named_by_an_alias_is_refused_naming_its_model() -> None:
    assert problems("  - {name: gpt-4.1, provider: mock, fallbacks: [mini]}\n") == [
        "models[1].fallbacks: 'mini' is an alias; name its model 'gpt-4o-mini'"
    ]


def test_a_fallback_named_by_a_model_group_is_refused_as_one() -> None:
    assert problems("  - {name: gpt-4.1, provider: mock, fallbacks: [minis]}\n") == [
        "models[1].fallbacks: 'minis' is a model group; a fallback is a model"
    ]


def test_an_unknown_fallback_is_still_unknown() -> None:
    assert problems("  - {name: gpt-4.1, provider: mock, fallbacks: [gpt-4o-mimi]}\n") == [
        "models[1].fallbacks: unknown model 'gpt-4o-mimi'"
    ]


def test_a_fallback_by_its_models_name_loads() -> None:
    parse_config(
        HEAD.replace(
            "model_groups:",
            "  - {name: gpt-4.1, provider: mock, fallbacks: [gpt-4o-mini]}\nmodel_groups:",
        ),
        "test.yaml",
        {},
    )

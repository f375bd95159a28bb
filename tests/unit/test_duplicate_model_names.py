"""A model name or alias given twice is refused at load naming the field that repeats
it, as `extproc check-config` prints it: the model's index in ``models`` (its
``name``, or the alias's index in its ``aliases``), not a position counted over every
model's name and aliases together, which pointed at another model or at none."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.cli import main
from extproc.config import ConfigError, parse_config

# Three models, the first two with aliases: a count over names and aliases together
# runs ahead of the models' own indexes.
HEAD = """
providers:
  - {name: mock, base_url: 'http://127.0.0.1:8089/v1', api_key: k}
models:
  - {name: gpt-4o, provider: mock, aliases: [four, omni]}
  - {name: gpt-4o-mini, provider: mock, aliases: [mini]}
"""


def problems(models: str) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        parse_config(HEAD + models, "test.yaml", {})
    return refused.value.problems


def test_a_repeated_model_name_names_that_model() -> None:
    assert problems("  - {name: gpt-4o-mini, provider: mock}\n") == [
        "models[2].name: duplicate name 'gpt-4o-mini'"
    ]


def test_a_repeated_alias_names_the_alias_that_repeats_it() -> None:
    assert problems("  - {name: gpt-4.1, provider: mock, aliases: [fast, mini]}\n") == [
        "models[2].aliases[1]: duplicate name 'mini'"
    ]


def test_an_alias_that_is_its_own_models_name_is_named() -> None:
    assert problems("  - {name: gpt-4.1, provider: mock, aliases: [gpt-4.1]}\n") == [
        "models[2].aliases[0]: duplicate name 'gpt-4.1'"
    ]


def test_check_config_prints_the_field_of_the_repeated_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(HEAD + "  - {name: omni, provider: mock}\n")
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--config", str(config)])
    assert exited.value.code == 2
    assert "models[2].name: duplicate name 'omni'" in capsys.readouterr().err

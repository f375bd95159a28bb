"""A key put where a model's name goes in the config is refused at load, never published.

A model's names are listed to every client with a key (``GET /v1/models``) and logged
(``serve`` names the models without a price at every load). A config that named a model
``${OPENAI_API_KEY}`` (meaning ``api_key:``), or after another team's key, or with a
key of a well-known shape, loaded: team1 listing its models read team2's key and the
provider's key, and the gateway's log printed them. Now ``check-config``, ``serve`` and
a reload refuse it, naming the field, never the value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.cli import main
from extproc.config import parse_config
from extproc.config.loader import ConfigError
from extproc.devstack import DEFAULT_CONFIG
from tests.unit.test_query_credential_shapes import GATEWAY_KEY, GITHUB, OPENAI

DEFAULT = DEFAULT_CONFIG.read_text()
FIRST_MODEL = "  - name: gpt-4o-mini\n"
# A self-hosted server's key: no well-known shape, so only knowing it finds it.
SERVER_KEY = "vllm-local-4f2a9c1e7bQ8zX"


def with_model(name: str, aliases: str = "") -> str:
    assert FIRST_MODEL in DEFAULT
    entry = f"  - name: {name}\n    provider: mock\n{aliases}"
    return DEFAULT.replace(FIRST_MODEL, entry + FIRST_MODEL, 1)


def problems_of(text: str, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "gateway.yaml", environ)
    return refused.value.problems


@pytest.mark.parametrize(
    ("text", "environ", "secret", "said"),
    [
        # A key variable where the name goes.
        (with_model("${OPENAI_API_KEY}"), {"OPENAI_API_KEY": SERVER_KEY}, SERVER_KEY,
         "models[0].name: holds a secret of this file"),
        # Another team's key, as an alias.
        (with_model("team-models", "    aliases: [team2-key]\n"), {}, "team2-key",
         "models[0].aliases[0]: holds a secret of this file"),
        # Well-known shapes, from a variable whose name says nothing.
        (with_model("${UPSTREAM}"), {"UPSTREAM": OPENAI}, OPENAI,
         "models[0].name: holds what looks like an OpenAI or Anthropic API key"),
        (with_model("${UPSTREAM}"), {"UPSTREAM": GATEWAY_KEY}, GATEWAY_KEY,
         "models[0].name: holds what looks like an API key of this gateway"),
        (with_model("${UPSTREAM}"), {"UPSTREAM": GITHUB}, GITHUB,
         "models[0].name: holds what looks like a GitHub token"),
    ],
    ids=["key-variable", "org-key-alias", "openai-shape", "gateway-key", "github-token"],
)  # fmt: skip
def test_a_model_named_by_a_key_is_refused_naming_the_field(
    text: str, environ: dict[str, str], secret: str, said: str
) -> None:
    [problem] = problems_of(text, environ)
    assert problem.startswith(said)
    assert secret not in problem


def test_check_config_refuses_it_without_printing_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(with_model("${OPENAI_API_KEY}"))
    monkeypatch.setenv("OPENAI_API_KEY", SERVER_KEY)
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--config", str(path)])
    assert exited.value.code == 2
    printed = capsys.readouterr()
    assert "models[0].name: holds a secret of this file" in printed.err
    assert SERVER_KEY not in printed.out + printed.err


def test_model_names_of_every_kind_still_load() -> None:
    # Real model ids (a fine-tune's suffix, a Bedrock ARN, a repo name) are no key.
    names = [
        "ft:gpt-4o-mini-2024-07-18:acme:support:9xYz1AbC",
        "meta-llama/Llama-3.3-70B-Instruct",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude",
    ]
    text = DEFAULT
    for name in names:
        text = text.replace(FIRST_MODEL, f"  - name: '{name}'\n    provider: mock\n" + FIRST_MODEL)
    config = parse_config(text, "gateway.yaml", {})
    assert set(names) <= {model.name for model in config.models}

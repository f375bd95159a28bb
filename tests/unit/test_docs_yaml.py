"""Every YAML block of the README and docs/, loaded as the page says it works.

A platform team copies these blocks into its config. A key renamed in the code, a value
the loader now refuses or a model named after a provider no example defines turns a
page into a config that `extproc check-config` rejects. So each block is validated as
the config loader validates a file:

- a block with `providers` and `models` is a whole config, loaded on its own;
- any other block is sections of one, loaded into the default config
  (`config/gateway.yaml`): a section it shows replaces the default's, and the entries
  of a list of named things (providers, models, routes) replace the default's entries
  of the same name or join them, as an operator adds a model to a config;
- a block that is one entry of a list, or no gateway config at all, is declared below
  (``ENTRIES``, ``NOT_CONFIG``) by its page and first line: an undeclared one fails,
  and so does a declaration no block matches any more.

A provider a fragment names but defines elsewhere on its page (the failover examples'
`vertex-us`, `bedrock-eu-central-1`) is added as a provider of the type its name starts
with. A `${VAR}` without a default gets a placeholder value, as a deployment sets it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config.loader import ConfigError, parse_config
from extproc.config.model import GatewayConfig

DOCS = [Path("README.md"), *sorted(Path("docs").glob("*.md"))]
DEFAULT_CONFIG = Path("config/gateway.yaml")
FENCE = re.compile(r"^```ya?ml[^\n]*\n(.*?)^```", re.S | re.M)
REQUIRED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

Config = dict[str, Any]

# (page, first line) of blocks that are no gateway config, and what they are.
NOT_CONFIG = {
    ("docs/authentication.md", "# Pod spec"): "a Kubernetes pod spec mounting the key Secret",
}


def _guards(entries: list[Any]) -> Config:
    return {"guardrails": {"policies": [{"name": "doc", "request": entries}]}}


def _providers(entries: list[Any]) -> Config:
    return {"providers": entries}


# (page, first line) of blocks that are entries of a list, and the sections they are in.
ENTRIES: dict[tuple[str, str], Callable[[list[Any]], Config]] = {
    ("docs/guardrails.md", "- name: banned-words"): _guards,
    ("docs/guardrails.md", "- name: employee-ids"): _guards,
    ("docs/guardrails.md", "- name: pii"): _guards,
    ("docs/providers.md", "  - name: bedrock"): _providers,
}

# The key each named list's entries are known by.
NAMED_LISTS = {"providers": "name", "models": "name", "routes": "name", "model_prefixes": "prefix"}


def yaml_blocks() -> list[tuple[str, int, str]]:
    """(page, line of the fence, text) of every YAML block."""
    found = []
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        for block in FENCE.finditer(text):
            line = text.count("\n", 0, block.start()) + 1
            found.append((str(page), line, block.group(1)))
    return found


def _first_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.strip())


def _provider_named(name: str) -> Config:
    """A provider for a name a page's fragment uses, of the type the name starts with."""
    if name.startswith("bedrock"):
        region = "eu-central-1" if "eu" in name else "us-east-1"
        return {"name": name, "type": "bedrock", "aws": {"region": region},
                "base_url": f"https://bedrock-runtime.{region}.amazonaws.com"}  # fmt: skip
    if name.startswith("vertex"):
        region = "europe-west1" if "eu" in name else "us-east5"
        return {"name": name, "type": "vertex", "gcp": {"project": "doc", "region": region},
                "base_url": f"https://{region}-aiplatform.googleapis.com"}  # fmt: skip
    if name.startswith("anthropic"):
        return {"name": name, "type": "anthropic", "base_url": "https://api.anthropic.com/v1",
                "api_key": "doc-key"}  # fmt: skip
    return {"name": name, "base_url": "https://api.openai.com/v1", "api_key": "doc-key"}


def _merged(base: Config, fragment: Config) -> Config:
    config = dict(base)
    for section, value in fragment.items():
        key = NAMED_LISTS.get(section)
        if key is None or not isinstance(value, list) or not isinstance(base.get(section), list):
            config[section] = value
            continue
        names = {entry.get(key) for entry in value if isinstance(entry, dict)}
        config[section] = [entry for entry in base[section] if entry.get(key) not in names]
        config[section] += value
    defined = {entry["name"] for entry in config["providers"]}
    named = [
        entry["provider"]
        for section in ("models", "routes", "model_prefixes")
        for entry in fragment.get(section) or ()
        if isinstance(entry, dict) and isinstance(entry.get("provider"), str)
    ]
    config["providers"] = [
        *config["providers"],
        *(_provider_named(name) for name in dict.fromkeys(named) if name not in defined),
    ]
    return config


def as_config(page: str, text: str) -> Config | None:
    """The config a block stands for, or None when it is none."""
    if (page, _first_line(text)) in NOT_CONFIG:
        return None
    raw = yaml.safe_load(text)
    wrap = ENTRIES.get((page, _first_line(text)))
    if wrap is not None:
        assert isinstance(raw, list), f"{page}: declared a list entry, but is {type(raw)}"
        raw = wrap(raw)
    assert isinstance(raw, dict), (
        f"{page}: a YAML block that is no mapping of config sections; if it is one entry "
        "of a list or no gateway config, declare it in ENTRIES or NOT_CONFIG"
    )
    if "providers" in raw and "models" in raw:
        return raw  # type: ignore[no-any-return]
    return _merged(yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8")), raw)


def load(page: str, line: int, text: str, config: Config) -> GatewayConfig:
    environ = {name: "doc-placeholder-value" for name in REQUIRED.findall(text)}
    return parse_config(yaml.safe_dump(config, sort_keys=False), f"{page}:{line}", environ)


@pytest.mark.parametrize(
    ("page", "line", "text"),
    yaml_blocks(),
    ids=[f"{page}:{line}" for page, line, _ in yaml_blocks()],
)
def test_each_yaml_block_of_the_docs_loads_as_a_config(page: str, line: int, text: str) -> None:
    config = as_config(page, text)
    if config is None:
        return
    try:
        load(page, line, text, config)
        refused = ""
    except ConfigError as error:
        refused = str(error)
    assert not refused, f"the config loader refuses the block of {page}:{line}:\n{refused}"


def test_the_docs_have_yaml_blocks_of_every_kind() -> None:
    blocks = yaml_blocks()
    assert len(blocks) >= 30
    whole = [text for page, _, text in blocks if "providers:" in text and "models:" in text]
    assert whole and len(whole) < len(blocks)


def test_every_declared_block_is_on_its_page() -> None:
    """A declaration whose block was edited or removed would excuse the next block
    that happens to start with the same line."""
    shown = {(page, _first_line(text)) for page, _, text in yaml_blocks()}
    assert set(NOT_CONFIG) | set(ENTRIES) <= shown


def test_a_block_the_loader_refuses_fails_the_check() -> None:
    """The check can fail: a model of a provider nobody defines, or a key the loader
    does not know, is refused after the merge too."""
    page = "docs/configuration.md"
    unknown_key = "limits:\n  max_body_bytes: 10\n"
    with pytest.raises(ConfigError, match="unknown field"):
        load(page, 1, unknown_key, as_config(page, unknown_key) or {})
    wrong_type = "limits:\n  max_messages: many\n"
    with pytest.raises(ConfigError, match=r"limits\.max_messages"):
        load(page, 1, wrong_type, as_config(page, wrong_type) or {})


def test_a_fragments_models_join_the_default_ones() -> None:
    """A fallback to one of the default config's models resolves, as it does when an
    operator adds the fragment's model to that config."""
    text = "models:\n  - {name: gpt-x, provider: openai, fallbacks: [claude-sonnet-4-0]}\n"
    config = load("docs/providers.md", 1, text, as_config("docs/providers.md", text) or {})
    names = [model.name for model in config.models]
    assert "gpt-x" in names and "claude-sonnet-4-0" in names


# --- the validation errors docs/configuration.md shows ----------------------------------


def test_the_validation_errors_the_reference_shows_are_the_loaders(tmp_path: Path) -> None:
    """The reference shows what `check-config` prints for three mistakes: the same
    mistakes in the default config give those lines, word for word."""
    reference = Path("docs/configuration.md").read_text(encoding="utf-8")
    shown = re.search(r"```\n(invalid config gateway\.yaml:\n.*?)```", reference, re.S)
    assert shown is not None
    config = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    config["server"]["grpc_address"] = "nope"
    config["server"]["bogus"] = True
    config["providers"][0]["base_url"] = "ftp://x"
    with pytest.raises(ConfigError) as refused:
        parse_config(yaml.safe_dump(config, sort_keys=False), "gateway.yaml", {})
    assert str(refused.value).splitlines() == shown.group(1).splitlines()

"""A model's name is published: one that is a secret is refused at load.

Every client with a key lists the models it may use (``GET /v1/models``), and each
request's model is in the request log, the span and the metrics' ``model`` labels;
``serve`` logs the names of the models without a price at every load. A key put where a
model's name goes by mistake (``name: ${OPENAI_API_KEY}``, meaning ``api_key:``) loaded
as a model named by the provider's key: handed to every client that listed the models,
and logged whole. Refused naming the field, never the value: a value of the file's
secrets (``echoed_secrets.secrets_of_file``: secret-named variables and fields, the org
keys among them), or anything shaped as a well-known key (which no request could name
either: ``stages.model_credentials`` refuses it).
"""

from __future__ import annotations

from collections.abc import Iterator, Set

from extproc.auth import credential_shapes
from extproc.config.model import GatewayConfig


def secret_model_names(config: GatewayConfig, secrets: Set[str]) -> list[str]:
    """One problem per model name or alias that is a secret, by its field."""
    return [
        f"{field}: holds {what}; a model's name is listed to every client and logged: "
        "put the key in its provider's api_key"
        for field, name in _names(config)
        if (what := _secret_in(name, secrets)) is not None
    ]


def _names(config: GatewayConfig) -> Iterator[tuple[str, str]]:
    for index, model in enumerate(config.models):
        yield f"models[{index}].name", model.name
        for alias_index, alias in enumerate(model.aliases):
            yield f"models[{index}].aliases[{alias_index}]", alias
    for index, group in enumerate(config.model_groups):
        yield f"model_groups[{index}].name", group.name


def _secret_in(name: str, secrets: Set[str]) -> str | None:
    if name.strip() in secrets:
        return "a secret of this file (a value of a variable or field named like a secret)"
    found = credential_shapes.kind(name)
    return None if found is None else f"what looks like {found}"

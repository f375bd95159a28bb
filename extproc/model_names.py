"""How the gateway's rules compare model names: without case or surrounding whitespace.

A route with a ``provider``, like a ``model_prefixes`` entry, sends a name the config
does not list to the provider as the client spelled it. A provider that reads
``Claude-Sonnet-4-0`` or ``"claude-sonnet-4-0 "`` as ``claude-sonnet-4-0`` would
otherwise serve a model past the access rules, the quota rules and the price table that
name it. Patterns ending in ``*`` match by prefix.

A rule that names an alias names its model: ``models: [titan-embed]`` covers a request
for ``amazon.titan-embed-text-v2:0`` too (``covering_aliases``), as a rule naming the
model covers its aliases, so no spelling of a model escapes a limit or an access rule.
A rule that names a model group (``model_groups``) names each of its members likewise:
it covers every request a member serves, asked for by the group's name or the member's.

Bedrock serves one model under several ids: its own (``anthropic.claude-3-haiku-...``),
a cross-region inference profile's (``us.anthropic.claude-3-haiku-...``) and the ARN of
either; a route that sends any id to Bedrock (``/bedrock/<id>``, Converse's
``/model/<id>/converse``) reaches the model by each. A rule naming the model (or its
alias) covers them all (``covers``); a rule naming a profile, or ``us.*``, keeps
covering that profile's ids alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from extproc.providers.bedrock_model_ids import base_model_id


def comparable(name: str) -> str:
    """A model name or pattern as rules compare it: trimmed, case folded, Vertex's ``@``
    before a version read as Anthropic's ``-``."""
    return name.strip().casefold().replace("@", "-")


def anthropic_spelling(name: str) -> str:
    """``name`` as Anthropic's API knows it: Vertex's ``claude-...@{version}`` becomes
    ``claude-...-{version}`` (Anthropic's API refuses a name with ``@`` as an unknown
    model). The one model whose names differ otherwise, ``claude-3-5-sonnet-v2@20241022``
    (Anthropic's ``claude-3-5-sonnet-20241022``), needs the config to name it."""
    return name.replace("@", "-")


def matches(patterns: Sequence[str], names: Sequence[str]) -> bool:
    """Whether a pattern matches one of ``names`` (both already ``comparable``)."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if any(name.startswith(pattern[:-1]) for name in names):
                return True
        elif pattern in names:
            return True
    return False


def covers(patterns: Sequence[str], names: Sequence[str]) -> bool:
    """Whether a rule's patterns (access and quota rules: ``covering_aliases``) cover one
    of ``names`` (``comparable``), a Bedrock id by any of its spellings. A key's own
    ``allowed_models`` keeps to ``matches``: it narrows, so it stays with the names it
    lists."""
    return matches(patterns, tuple(each for name in names for each in bedrock_spellings(name)))


def bedrock_spellings(name: str) -> Iterator[str]:
    """``name`` (already ``comparable``), then, for a Bedrock id, the profile id its ARN
    names and the foundation model's own id. Only names Bedrock reads that way: the ARN
    of a foundation model or an inference profile (others hide their model), a profile
    id whose rest is ``<vendor>.<model>``, so that ``us.x`` on an OpenAI-compatible
    provider is no ``x``."""
    yield name
    profile = name
    if name.startswith("arn:"):
        parts = name.split(":", 5)
        if len(parts) < 6 or parts[2] != "bedrock" or base_model_id(name) == name:
            return
        profile = parts[5].partition("/")[2]
        if not profile:
            return
        yield profile
    model = base_model_id(profile)
    if model != profile and "." in model:
        yield model


def covering_aliases(
    patterns: Sequence[str],
    aliases: Mapping[str, str],
    groups: Mapping[str, Sequence[str]] | None = None,
) -> tuple[str, ...]:
    """``patterns`` (made ``comparable``), plus the name of every model one of whose
    aliases they match, and of every member of a model group they match; ``aliases``
    maps each alias to its model's configured name, ``groups`` each group's name to its
    members' (``config.model_groups``)."""
    own = tuple(comparable(pattern) for pattern in patterns)
    models = {
        comparable(model) for alias, model in aliases.items() if matches(own, (comparable(alias),))
    }
    for group, members in (groups or {}).items():
        if matches(own, (comparable(group),)):
            models.update(comparable(member) for member in members)
    return own + tuple(sorted(models - set(own)))

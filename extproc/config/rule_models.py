"""Model names in rules that name no model the gateway knows: warnings, not errors.

A quota rule whose ``models`` hold only a typo (``gpt-4o-mni``) covers no request, so
the team it was written to cap spends without limit; an access rule's covers no
request either, and a key's ``allowed_models`` refuses the key the model it meant.
The config cannot tell every such name from a real one: a route with a ``provider``
sends any name to its provider, so a rule may rightly name a model the config does
not list. What the config does know is checked: the models and their aliases, the
names the price table prices, ``model_prefixes``, and Bedrock's other ids of each
(``extproc.model_names``). A name none of them covers is reported with the closest
known name, at load and by ``extproc check-config`` (``load_warnings``).

Not refused: removing a model from ``models`` would then need every rule naming it
edited in the same change, and a reload refused for a stale rule keeps the old config,
and the removed model, serving.
"""

from __future__ import annotations

from collections.abc import Iterator

from extproc.config.model import GatewayConfig, did_you_mean
from extproc.model_names import bedrock_spellings, comparable


class KnownModels:
    """The model names a config knows, as rules compare them."""

    def __init__(self, config: GatewayConfig) -> None:
        # In the config's own spelling, for "did you mean".
        self.names = list(
            dict.fromkeys(
                [
                    *(name for model in config.models for name in (model.name, *model.aliases)),
                    *(group.name for group in config.model_groups),
                    *config.pricing.models,
                ]
            )
        )
        self._spellings = {
            spelling for name in self.names for spelling in bedrock_spellings(comparable(name))
        }
        self._prefixes = tuple(comparable(prefix.prefix) for prefix in config.model_prefixes)
        # A name nothing above covers may still be served by such a route.
        self.pass_through = any(route.provider is not None for route in config.routes)
        # Each pattern's answer, once: thousands of keys list the same few.
        self._answers: dict[str, tuple[bool, str]] = {}

    def unknown(self, pattern: str) -> str | None:
        """None when ``pattern`` names a known model, else its "did you mean" (maybe "")."""
        answer = self._answers.get(pattern)
        if answer is None:
            covered = self.covers(pattern)
            answer = self._answers[pattern] = (covered, "" if covered else self.closest(pattern))
        return None if answer[0] else answer[1]

    def covers(self, pattern: str) -> bool:
        """Whether ``pattern`` (a rule's, a trailing ``*`` a prefix) names a known model."""
        name = comparable(pattern)
        if name.endswith("*"):
            stem = name[:-1]
            return any(known.startswith(stem) for known in self._spellings) or any(
                prefix.startswith(stem) or stem.startswith(prefix) for prefix in self._prefixes
            )
        if name in self._spellings or any(name.startswith(p) for p in self._prefixes):
            return True
        # A Bedrock profile or ARN of a known model (`us.<model>`) is requested by that
        # id only where a route sends any name on; elsewhere no request carries it.
        return self.pass_through and any(
            spelling in self._spellings for spelling in bedrock_spellings(name)
        )

    def closest(self, pattern: str) -> str:
        """A "did you mean" for ``pattern``: a pattern is compared with the known names
        cut to its length, so ``gtp-4*`` suggests ``gpt-4*``."""
        if pattern.endswith("*"):
            stem = pattern[:-1]
            candidates = list(dict.fromkeys(name[: len(stem)] + "*" for name in self.names))
        else:
            candidates = self.names
        return did_you_mean(pattern, candidates)


def unknown_model_warnings(config: GatewayConfig) -> list[str]:
    """One line per model name or pattern in a rule that no known model answers to."""
    known = KnownModels(config)
    return list(_warnings(config, known))


def _warnings(config: GatewayConfig, known: KnownModels) -> Iterator[str]:
    lists = [
        *(
            (f"quotas.rules[{i}].models", rule.models, f"quota rule {rule.name!r} limits")
            for i, rule in enumerate(config.quotas.rules)
        ),
        *(
            (f"auth.access_rules[{i}].models", rule.models, f"access rule {rule.name!r} covers")
            for i, rule in enumerate(config.auth.access_rules)
        ),
        *(
            (f"auth.api_keys[{i}].allowed_models", key.allowed_models, f"key {key.id!r} is allowed")
            for i, key in enumerate(config.auth.api_keys)
        ),
    ]
    for where, patterns, owner in lists:
        for pattern in patterns:
            hint = known.unknown(pattern)
            if hint is not None:
                yield _line(known, where, pattern, f"{owner} no request for it", hint)


def _line(known: KnownModels, where: str, pattern: str, consequence: str, hint: str) -> str:
    if pattern.endswith("*"):
        what = f"{pattern!r} matches no model the gateway knows"
    else:
        what = f"{pattern!r} is no model the gateway knows"
    line = f"{where}: {what} ({consequence}){hint}"
    if "*" in pattern[:-1]:
        # Only a trailing * is a wildcard (extproc.model_names): `gpt-*-mini` is a name.
        line += "; a * matches only at the end of a pattern"
    if known.pass_through:
        served, listed = (
            ("names it matches", "them") if pattern.endswith("*") else ("it under this name", "it")
        )
        line += (
            f"; a route with a provider may still serve {served} (list {listed} in"
            " pricing.models to say so)"
        )
    return line

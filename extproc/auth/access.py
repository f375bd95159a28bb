"""Access rules: who may use which model on which route.

A request is covered by every rule whose ``models`` and ``routes`` match it
(empty lists match everything; a model pattern may end in ``*``). If any rule
covers it, the caller must be allowed by at least one of those rules; if none
does, it is allowed. A key's own ``allowed_models``/``allowed_routes`` narrow
further.
"""

from __future__ import annotations

from collections.abc import Sequence

from extproc.config.auth_model import AccessRule
from extproc.context import Identity


def _model_matches(patterns: Sequence[str], model: str) -> bool:
    for pattern in patterns:
        if pattern.endswith("*"):
            if model.startswith(pattern[:-1]):
                return True
        elif pattern == model:
            return True
    return False


def _allows(rule: AccessRule, identity: Identity) -> bool:
    if identity.api_key_id is not None and identity.api_key_id in rule.api_keys:
        return True
    if identity.user_id is not None and identity.user_id in rule.users:
        return True
    return any(group in rule.groups for group in identity.groups)


class AccessPolicy:
    def __init__(self, rules: Sequence[AccessRule]) -> None:
        self._rules = tuple(rules)

    def denial(
        self, identity: Identity, model: str, route: str | None, canonical: str | None = None
    ) -> str | None:
        """Why ``identity`` may not use ``model`` on ``route``; None when it may.

        ``canonical`` is the configured name of the model ``model`` is an alias of: a
        rule or a key's list naming either name covers the request, so an alias
        neither escapes a rule nor is refused where its model is allowed."""
        names = (model,) if canonical is None or canonical == model else (model, canonical)
        allowed_models = identity.allowed_models
        if allowed_models and not any(_model_matches(allowed_models, name) for name in names):
            return f"API key '{identity.api_key_id}' may not use model '{model}'"
        covering = [
            rule
            for rule in self._rules
            if (not rule.models or any(_model_matches(rule.models, name) for name in names))
            and (route is None or not rule.routes or route in rule.routes)
        ]
        if not covering or any(_allows(rule, identity) for rule in covering):
            return None
        who = (
            f"group '{identity.group_id}'"
            if identity.group_id
            else f"user '{identity.user_id}'"
            if identity.user_id
            else f"API key '{identity.api_key_id}'"
            if identity.api_key_id
            else "this caller"
        )
        return f"{who} may not use model '{model}' (access rule '{covering[0].name}')"

"""Access rules: who may use which model on which route.

A request is covered by every rule whose ``models`` and ``routes`` match it
(empty lists match everything; a model pattern may end in ``*``). If any rule
covers it, the caller must be allowed by at least one of those rules; if none
does, it is allowed. A key's own ``allowed_models``/``allowed_routes`` narrow
further.

Model names are compared without surrounding whitespace and case
(``extproc.model_names``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from extproc.config.auth_model import AccessRule
from extproc.context import Identity
from extproc.model_names import comparable, covering_aliases, covers, matches


def _allows(rule: AccessRule, identity: Identity) -> bool:
    if identity.api_key_id is not None and identity.api_key_id in rule.api_keys:
        return True
    if identity.user_id is not None and identity.user_id in rule.users:
        return True
    return any(group in rule.groups for group in identity.groups)


class AccessPolicy:
    def __init__(
        self,
        rules: Sequence[AccessRule],
        aliases: Mapping[str, str] | None = None,
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """``aliases``: each model alias and its model's name: a rule naming an alias
        covers its model under every name (``model_names.covering_aliases``); ``groups``:
        each model group's name and its members', which a rule naming the group covers."""
        # Each rule with its model patterns made comparable once, not per request.
        self._rules = tuple(
            (rule, covering_aliases(rule.models, aliases or {}, groups)) for rule in rules
        )

    def denial(
        self,
        identity: Identity,
        model: str,
        route: str | None,
        canonical: str | None = None,
        shown: str | None = None,
    ) -> str | None:
        """Why ``identity`` may not use ``model`` on ``route``; None when it may.

        ``canonical`` is the configured name of the model ``model`` is an alias of (or
        of the group a member is asked by): a rule or a key's list naming either name
        covers the request, so an alias neither escapes a rule nor is refused where its
        model is allowed. ``shown``: the name the refusal names (default ``model``)."""
        names = tuple(comparable(name) for name in (model, canonical) if name is not None)
        model = shown or model
        allowed_models = identity.allowed_models
        if allowed_models and not matches(tuple(map(comparable, allowed_models)), names):
            return f"API key '{identity.api_key_id}' may not use model '{model}'"
        covering = [
            rule
            for rule, patterns in self._rules
            if (not patterns or covers(patterns, names))
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

"""Who may call which MCP tool or use which A2A agent: ``agents.access`` rules.

For one caller, server and tool (None for an A2A call), the rules that cover it
are those whose ``servers`` and ``tools`` globs match (empty lists match all;
a rule with ``tools`` never covers an A2A call). Then:

1. a covering ``deny`` rule that names the caller (or nobody: everyone) refuses;
2. else, if covering ``allow`` rules exist, one of them must name the caller
   (a rule naming nobody names everyone);
3. else ``agents.default_access`` decides.

Deny wins over allow, so "everyone but interns" is an allow plus a deny.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

from extproc.agents.tool_names import ToolGlobs, compile_tool_globs, folded
from extproc.config.agents_model import AccessEffect, ToolAccessRule
from extproc.context import Identity


def compile_globs(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One regex for a list of globs (``*``, ``?``, ``[...]``); None for an empty list."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    deny: bool
    servers: re.Pattern[str] | None
    # A tool's name as written or folded: a lenient server runs ``Deploy_Prod`` as
    # ``deploy_prod`` (``tool_names``).
    tools: ToolGlobs | None
    groups: frozenset[str]
    users: frozenset[str]
    api_keys: frozenset[str]

    def covers(self, server: str, tool: str | None, tool_folded: str | None) -> bool:
        if self.servers is not None and not self.servers.match(server):
            return False
        if self.tools is None:
            return True
        return tool is not None and tool_folded is not None and self.tools.match(tool, tool_folded)

    def names(self, identity: Identity) -> bool:
        if not (self.groups or self.users or self.api_keys):
            return True
        if identity.api_key_id is not None and identity.api_key_id in self.api_keys:
            return True
        if identity.user_id is not None and identity.user_id in self.users:
            return True
        return any(group in self.groups for group in identity.groups)


class ToolAccess:
    def __init__(self, rules: Sequence[ToolAccessRule], default: AccessEffect) -> None:
        self._rules = tuple(
            _Rule(
                rule.name,
                rule.effect is AccessEffect.DENY,
                compile_globs(rule.servers),
                compile_tool_globs(rule.tools),
                frozenset(rule.groups),
                frozenset(rule.users),
                frozenset(rule.api_keys),
            )
            for rule in rules
        )
        self._default_allows = default is AccessEffect.ALLOW

    def governs_tools(self, server: str) -> bool:
        """Whether any rule may hide a tool of ``server`` (else tool lists pass unread)."""
        if not self._default_allows:
            return True
        return any(rule.servers is None or rule.servers.match(server) for rule in self._rules)

    def denial(self, identity: Identity, server: str, tool: str | None) -> str | None:
        """Why the caller may not use ``tool`` (or the A2A agent ``server``); None if it may."""
        # Folded once for every rule: a tool list asks this of each of its tools.
        tool_folded = folded(tool) if tool is not None else None
        covering = [rule for rule in self._rules if rule.covers(server, tool, tool_folded)]
        what = f"tool '{tool}' on server '{server}'" if tool is not None else f"agent '{server}'"
        for rule in covering:
            if rule.deny and rule.names(identity):
                return f"{_who(identity)} may not use {what} (access rule '{rule.name}')"
        allows = [rule for rule in covering if not rule.deny]
        if allows:
            if any(rule.names(identity) for rule in allows):
                return None
            return f"{_who(identity)} may not use {what} (access rule '{allows[0].name}')"
        if self._default_allows:
            return None
        return f"{_who(identity)} may not use {what} (no access rule allows it)"


def _who(identity: Identity) -> str:
    if identity.group_id:
        return f"group '{identity.group_id}'"
    if identity.user_id:
        return f"user '{identity.user_id}'"
    if identity.api_key_id:
        return f"API key '{identity.api_key_id}'"
    return "this caller"

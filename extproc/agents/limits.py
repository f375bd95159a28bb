"""``agents.limits`` as quota counters: the same windows, keys and Lua check as quotas.rules.

A tool call or A2A message is checked against every rule that selects one of
its subjects and covers its server and tool, one request counter per window;
``QuotaStore.reserve`` checks and counts them atomically in one round trip, so
the limits hold across replicas exactly like the LLM request limits. Counter
names start with ``agent:`` (a character rule names cannot hold), so they never
share a counter with a quota rule of the same name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from extproc.agents.access import compile_globs
from extproc.agents.tool_names import ToolGlobs, compile_tool_globs, folded
from extproc.config.agents_model import AgentLimitRule
from extproc.config.quota_model import QuotaMode, QuotasConfig, StoreFailure
from extproc.context import Identity
from extproc.errors import REDACTED
from extproc.quota.rules import Limit, refusal_order, selected, subject_values
from extproc.quota.windows import WindowKind, window_for

_COUNTERS: tuple[tuple[str, WindowKind], ...] = (
    ("requests_per_second", WindowKind.SECOND),
    ("requests_per_minute", WindowKind.MINUTE),
    ("requests_per_hour", WindowKind.HOUR),
    ("requests_per_day", WindowKind.DAY),
)


# Counter names: ``agent:<rule>``, or ``agent:<rule>:<tool>`` for a per-tool counter (the
# tool's folded name: ``tool_names``).
COUNTER_PREFIX = "agent:"
# The per-tool counter of a tool whose name holds a credential (``limits_for``).
HIDDEN_TOOL = REDACTED


def _counted_name(tool_folded: str) -> str:
    """The tool's part of a counter name: ``}`` written ``%7D``. A store key's subject ends
    at its last ``}`` (``management.quotas``): a tool name holding one (``x}:daily``) made
    ``extproc quota list`` show a subject that is not one (``team2}:agent:<rule>:x``)
    beside a quota rule's counter. No tool name the MCP spec advises holds one."""
    return tool_folded.replace("}", "%7D")


def rule_label(counter: str) -> str:
    """``agent:<rule>`` of a counter name, without the tool: the ``rule`` label of
    ``aigw_rate_limited_total``. Tool names are the client's to make up; with them, each
    would open a series of its own."""
    return COUNTER_PREFIX + counter.removeprefix(COUNTER_PREFIX).split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class _Rule:
    config: AgentLimitRule
    servers: re.Pattern[str] | None
    tools: ToolGlobs | None

    def covers(self, server: str, tool: str | None, tool_folded: str | None) -> bool:
        if self.servers is not None and not self.servers.match(server):
            return False
        if self.tools is None:
            return True
        return tool is not None and tool_folded is not None and self.tools.match(tool, tool_folded)


class AgentLimits:
    def __init__(self, rules: Sequence[AgentLimitRule], quotas: QuotasConfig) -> None:
        self._rules = tuple(
            _Rule(rule, compile_globs(rule.servers), compile_tool_globs(rule.tools))
            for rule in rules
        )
        self._on_store_failure = quotas.on_store_failure

    def __bool__(self) -> bool:
        return bool(self._rules)

    def limits_for(
        self,
        identity: Identity,
        headers: dict[str, str],
        server: str,
        tool: str | None,
        now: float,
        *,
        tool_hidden: bool = False,
    ) -> list[Limit]:
        """The limits of every rule that covers the call. ``tool_hidden``: the tool's name
        holds a credential (the caller's key, a key's shape: a client whose settings were
        swapped), so its per-tool counters go by ``HIDDEN_TOOL``: a counter's name is a
        store key, read by anyone with access to the store and kept for its window."""
        found: list[Limit] = []
        tool_folded = folded(tool) if tool is not None else None
        for rule in self._rules:
            config = rule.config
            subjects = [
                subject
                for subject in subject_values(config.subject, identity, headers)
                if selected(config.match, subject)
            ]
            if not subjects or not rule.covers(server, tool, tool_folded):
                continue
            name = COUNTER_PREFIX + config.name
            if config.per_tool and tool_folded is not None:
                # One counter for every spelling a lenient server runs as this tool.
                name += f":{HIDDEN_TOOL if tool_hidden else _counted_name(tool_folded)}"
            fail_open = (config.on_store_failure or self._on_store_failure) is (
                StoreFailure.FAIL_OPEN
            )
            for subject in subjects:
                for counter, window_kind in _COUNTERS:
                    value = getattr(config, counter)
                    if value is None:
                        continue
                    found.append(
                        Limit(
                            name, config.subject, subject, counter, "r", value,
                            window_for(window_kind, now), config.mode is QuotaMode.ENFORCE,
                            fail_open, "UTC",
                        )
                    )  # fmt: skip
        # The one that holds longest first, as for LLM requests: the store names the first
        # limit that refuses, and the refusal's retry-after comes from it. In config order
        # a minute's came before a day's used up with it, and sent the client back within
        # a minute to be refused again until the day ended.
        return refusal_order(found)

"""Tool names as the most lenient server reads them, for access rules and limits.

MCP tool names are exact by the spec, but servers and aggregators in front of
them do not all agree: some resolve a ``tools/call`` ignoring case (``DEPLOY_PROD``
runs ``deploy_prod``), some trim the name first. A rule written for ``deploy_*``
must then cover every spelling such a server would run as a ``deploy_*`` tool, or a
caller refused ``deploy_prod`` gets it as ``Deploy_Prod``, and a per-tool limit is
dodged by a new spelling per call. So tool globs match a name as written or
folded (``folded``: NFKC, casefolded, without whitespace, control or format
characters), and per-tool counters are kept by the folded name.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

from extproc.agents.jsonrpc import canonical_method


def folded(name: str) -> str:
    """``name`` as the most lenient server might read it, folded as lookalike method
    names are (``" Deploy_Prod"`` followed by a zero-width space is ``deploy_prod``)."""
    return canonical_method(name)


@dataclass(frozen=True, slots=True)
class ToolGlobs:
    """Globs of tool names that match a name as written or in its folded form."""

    exact: re.Pattern[str]
    loose: re.Pattern[str]

    def match(self, tool: str, tool_folded: str) -> bool:
        """Whether ``tool`` (``tool_folded``: ``folded(tool)``, made once by the caller for
        all its rules) matches, as written or folded."""
        return self.exact.match(tool) is not None or self.loose.match(tool_folded) is not None


def compile_tool_globs(patterns: Sequence[str]) -> ToolGlobs | None:
    """The globs of ``patterns`` (``*``, ``?``, ``[...]``); None for an empty list."""
    if not patterns:
        return None
    return ToolGlobs(_compile(patterns), _compile([folded(p) for p in patterns]))


def _compile(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))

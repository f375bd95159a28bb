"""What a reloaded config changes in the Envoy bootstrap it renders.

The gateway reloads its config alone: Envoy keeps the bootstrap it was started with.
A new provider (its cluster), a new route path, a listener or a failover chain only
reach Envoy once the bootstrap (or the Gateway API attachments) is rendered again and
Envoy restarted; until then Envoy cannot send the new provider anything, and the
gateway's reload looked like it worked. Comparing the two renderings names what
waits for that, by Envoy's resource names (provider and route names, never a value
that may be a secret).
"""

from __future__ import annotations

import logging
from typing import Any

from extproc.config.model import GatewayConfig
from extproc.envoy_bootstrap import render_bootstrap

log = logging.getLogger(__name__)


def bootstrap_changes(running: GatewayConfig, loaded: GatewayConfig) -> list[str]:
    """The parts of the bootstrap ``loaded`` renders otherwise than ``running``:
    ``cluster <name>`` (added, removed or changed), ``listener <name>``, or the name
    of another top-level section (``admin``, ``tracing``...)."""
    try:
        before, after = render_bootstrap(running), render_bootstrap(loaded)
    except Exception:
        # Rendering is the CLI's business to report; a reload must not fail on it.
        log.debug("could not compare the Envoy bootstraps", exc_info=True)
        return []
    changes = [
        section
        for section in _keys(before, after)
        if section != "static_resources" and before.get(section) != after.get(section)
    ]
    resources_before = before.get("static_resources", {})
    resources_after = after.get("static_resources", {})
    for kind in ("listener", "cluster"):
        named_before = _by_name(resources_before.get(kind + "s", []))
        named_after = _by_name(resources_after.get(kind + "s", []))
        changes += [
            f"{kind} {name}"
            for name in _keys(named_before, named_after)
            if named_before.get(name) != named_after.get(name)
        ]
    return changes


def _keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Every key of either, in the order they come (before's first)."""
    return list(dict.fromkeys([*before, *after]))


def _by_name(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {str(resource.get("name")): resource for resource in resources}

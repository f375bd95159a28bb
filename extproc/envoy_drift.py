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
from pathlib import Path
from typing import Any

import yaml

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
    return rendering_changes(before, after)


def rendered_file_changes(config: GatewayConfig, bootstrap_file: str | Path) -> list[str]:
    """What Envoy's bootstrap file (as Envoy runs it) lacks of ``config``'s rendering, in
    ``bootstrap_changes``' words: ``check-config --envoy`` tells an operator, before a
    reload, that Envoy must be rendered again and restarted for the config to work."""
    text = Path(bootstrap_file).read_text(encoding="utf-8")
    running = yaml.safe_load(text)
    if not isinstance(running, dict):
        raise ValueError("not an Envoy bootstrap (a YAML mapping)")
    return rendering_changes(running, render_bootstrap(config))


def rendering_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The sections, listeners and clusters two bootstrap renderings disagree on."""
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

"""Lua scripts shipped with the package, loaded once and called with EVALSHA.

redis-py's ``Script`` sends EVALSHA and reloads the script only when the
server answers NOSCRIPT (after a restart or a failover).

A script cannot call another, so a reading several scripts share (a limit's reset
generation) is a file of its own, prepended to each script that needs it: one text to
change, and no script reads it another way.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

# The shared parts each script is prepended with.
_PRELUDES: dict[str, tuple[str, ...]] = {
    "quota_reserve": ("reset_generation",),
    "quota_settle": ("reset_generation",),
    "quota_undo": ("reset_generation",),
    "quota_reset": ("reset_generation",),
}


def _read(name: str) -> str:
    return resources.files("extproc.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


def script_source(name: str) -> str:
    return "".join(_read(part) for part in (*_PRELUDES.get(name, ()), name))


def register(client: Any, name: str) -> Any:
    return client.register_script(script_source(name))

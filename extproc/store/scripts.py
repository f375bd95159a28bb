"""Lua scripts shipped with the package, loaded once and called with EVALSHA.

redis-py's ``Script`` sends EVALSHA and reloads the script only when the
server answers NOSCRIPT (after a restart or a failover).
"""

from __future__ import annotations

from importlib import resources
from typing import Any


def script_source(name: str) -> str:
    return resources.files("extproc.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


def register(client: Any, name: str) -> Any:
    return client.register_script(script_source(name))

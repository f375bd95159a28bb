"""The event loop the gateway's processes run on.

``server.event_loop: auto`` (the default) runs the servers on uvloop when it is
installed (it is a dependency on Linux and macOS) and on asyncio's own loop
otherwise; ``uvloop`` insists on it, ``asyncio`` opts out. uvloop's callbacks,
futures and socket handling cost less CPU than the pure-Python loop's, and
grpc.aio wakes the loop a few times per ext_proc message: the benchmark's
gateway row spends about a tenth less CPU per request on it
(docs/performance.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, get_args

EventLoopKind = Literal["auto", "uvloop", "asyncio"]
# For command lines that choose the loop (the bench's processors).
EVENT_LOOP_KINDS: tuple[str, ...] = get_args(EventLoopKind)
T = TypeVar("T")


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(kind: EventLoopKind) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory ``asyncio.Runner`` takes (None: asyncio's default loop)."""
    if kind == "asyncio" or (kind == "auto" and not uvloop_available()):
        return None
    try:
        import uvloop
    except ImportError:
        raise RuntimeError(
            "server.event_loop is 'uvloop' but uvloop is not installed: pip install uvloop"
        ) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], kind: EventLoopKind = "auto") -> T:
    """``asyncio.run(main)`` on the loop ``kind`` names."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)

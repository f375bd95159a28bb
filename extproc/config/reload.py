"""Live reload: on SIGHUP or when the file changes, load it again and swap it in.

An invalid new file is logged and counted, and the old config keeps serving.
Files the config takes secrets from (admin token, provider and org key files)
are watched the same way, so rotating a mounted Secret needs no signal.
The file is polled (its mtime, size and inode) so the watch works the same on
every platform and on Kubernetes ConfigMap mounts, whose symlink swap changes
the inode.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from extproc.config.loader import ConfigError, load_config
from extproc.config.model import GatewayConfig

log = logging.getLogger(__name__)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return (found.st_mtime_ns, found.st_size, found.st_ino)


class ConfigReloader:
    def __init__(
        self,
        path: str | Path,
        apply: Callable[[GatewayConfig], Awaitable[None]],
        on_result: Callable[[bool], None],
        poll_interval_s: float = 1.0,
        watched: Callable[[], list[Path]] = list,
    ) -> None:
        self._path = Path(path)
        # Files the running config reads secrets from: a rotation reloads too.
        self._watched = watched
        self._apply = apply
        self._on_result = on_result
        self._interval = poll_interval_s
        self._stamp = self._stamps()
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[bool]] = set()
        # One reload at a time: a later one reads the file after an earlier one is
        # done, so the newest file is the one left serving.
        self._reloading = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def schedule_reload(self) -> None:
        """From a signal handler: reload soon, on the event loop."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def reload(self) -> bool:
        """Load the file again; True when the new config is now serving."""
        async with self._reloading:
            return await self._reload()

    async def _reload(self) -> bool:
        # Stamped before reading: a change written while this reload runs is seen
        # by the next poll, not taken for loaded.
        self._stamp = self._stamps()
        try:
            # Off the event loop: a large file (thousands of keys) takes most of a
            # second to parse and validate, and every open stream would wait.
            config = await asyncio.to_thread(load_config, self._path, os.environ)
            await self._apply(config)
        except ConfigError as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            self._on_result(False)
            return False
        except Exception:
            # Not a user error the loader names: still, the running config keeps
            # serving and the watcher keeps watching.
            log.exception("config reload failed, keeping the running config")
            self._on_result(False)
            return False
        log.info("config reloaded from %s", self._path)
        self._on_result(True)
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            stamp = self._stamps()
            if stamp[0] is not None and stamp != self._stamp:
                # A new config that reads other files changes the stamps' shape:
                # the next poll reloads once more, which changes nothing.
                await self.reload()

    def _stamps(self) -> tuple[tuple[int, int, int] | None, ...]:
        return (_stamp(self._path), *(_stamp(path) for path in self._watched()))

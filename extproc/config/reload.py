"""Live reload: on SIGHUP or when the file changes, load it again and swap it in.

An invalid new file is logged and counted, and the old config keeps serving.
Files the config takes secrets from (admin token, provider and org key files)
are watched the same way, so rotating a mounted Secret needs no signal.
The file is polled (its mtime, size and inode) so the watch works the same on
every platform and on Kubernetes ConfigMap mounts, whose symlink swap changes
the inode.

A new config refused while it was being applied (a key file it names is not
there yet, say) is tried again when one of the files it names changes: a
Secret mounted a moment after its ConfigMap, or a key file copied after the
config, then takes effect without a signal, instead of leaving the old config,
and the keys it revoked, serving until the next edit.

The reloader is made before the process starts serving, and stamps the files
then: a change written while the process starts (its store, its listeners) is
seen by the first poll, and a SIGHUP received meanwhile reloads once it has
started, rather than being lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from extproc import background
from extproc.config.loader import ConfigError, load_config
from extproc.config.model import GatewayConfig
from extproc.config.restart_only import as_started
from extproc.config.watched_files import secret_files

log = logging.getLogger(__name__)

# A file's (mtime, size, inode), or None while it cannot be read.
Stamp = tuple[int, int, int] | None


def _stamp(path: Path) -> Stamp:
    try:
        found = path.stat()
    except OSError:
        return None
    return (found.st_mtime_ns, found.st_size, found.st_ino)


def _stamps_of(paths: list[Path]) -> tuple[Stamp, ...]:
    return tuple(_stamp(path) for path in paths)


class ConfigReloader:
    def __init__(
        self,
        path: str | Path,
        apply: Callable[[GatewayConfig], Awaitable[None]],
        on_result: Callable[[bool], None],
        poll_interval_s: float = 1.0,
        watched: Callable[[], list[Path]] = list,
        files_of: Callable[[GatewayConfig], list[Path]] = secret_files,
    ) -> None:
        self._path = Path(path)
        # Files the running config reads secrets from: a rotation reloads too.
        self._watched = watched
        # The files a config names, and those of the last config refused while being
        # applied: one of them written or changed is worth another try.
        self._files_of = files_of
        self._waiting_on: list[Path] = []
        self._apply = apply
        self._on_result = on_result
        self._interval = poll_interval_s
        # Made before the process serves: stamped at once, on the caller's thread.
        self._stamp: tuple[Stamp, ...] = _stamps_of([self._path, *watched()])
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[bool]] = set()
        # One reload at a time: a later one reads the file after an earlier one is
        # done, so the newest file is the one left serving.
        self._reloading = asyncio.Lock()
        self._stopped = False
        # A SIGHUP before start(): the process is not serving yet, so it is applied then.
        self._signalled_early = False
        # A signalled reload is waiting for its turn and has not read the file yet.
        self._queued = False

    def start(self) -> None:
        """Watch from now on; a reload asked for before now runs at once."""
        self._task = asyncio.get_running_loop().create_task(self._watch())
        if self._signalled_early:
            self._signalled_early = False
            self.schedule_reload()

    async def stop(self) -> None:
        """Stop watching, and drop a reload still running: the gateway is stopping and
        closes the runtime it serves; one swapped in after that would never be closed.
        A SIGHUP during the drain is ignored for the same reason."""
        self._stopped = True
        await background.stop(self._task)
        for pending in list(self._pending):
            await background.stop(pending)

    def schedule_reload(self) -> None:
        """From a signal handler: reload soon, on the event loop (once started)."""
        if self._stopped:
            return
        if self._task is None:
            self._signalled_early = True
            return
        if self._queued:
            # A reload that has not read the file yet will read it as it is now: a burst
            # of signals (a tool sending one per file it wrote) is one more reload, not
            # one full load, JWKS fetch and token mint per signal.
            return
        self._queued = True
        task = asyncio.get_running_loop().create_task(self._queued_reload())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def reload(self) -> bool:
        """Load the file again; True when the new config is now serving."""
        async with self._reloading:
            return await self._reload()

    async def _queued_reload(self) -> bool:
        async with self._reloading:
            # From here on the file is read anew: a signal now asks for another reload.
            self._queued = False
            return await self._reload()

    def schedule_catch_up(self, running: GatewayConfig) -> None:
        """Once started on a config another process read (a worker, on the one its
        supervisor validated last): reload only if the file now says something else.

        Before, every worker's start reloaded unconditionally: each logged "config
        reloaded", counted a successful reload in aigw_config_reloads_total and built
        its runtime a second time, at every start of the pod, with nothing changed."""
        if self._stopped or self._task is None:
            self.schedule_reload()
            return
        task = asyncio.get_running_loop().create_task(self.catch_up(running))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def catch_up(self, running: GatewayConfig) -> bool:
        """``schedule_catch_up``'s work; True when the file's config is serving."""
        async with self._reloading:
            stamp = await self._stamps()
            try:
                loaded = await asyncio.to_thread(load_config, self._path, os.environ)
            except Exception:
                return await self._reload()  # refused as a reload is: said and counted
            # The settings that change only on restart are the running process's own.
            if as_started(running, loaded) == running:
                self._stamp = stamp
                return True
            return await self._reload()

    async def _reload(self) -> bool:
        # Stamped before reading: a change written while this reload runs is seen
        # by the next poll, not taken for loaded.
        self._stamp = await self._stamps()
        # The config file's and the running config's files, without those waited on.
        serving = self._stamp[: len(self._stamp) - len(self._waiting_on)]
        try:
            # Off the event loop: a large file (thousands of keys) takes most of a
            # second to parse and validate, and every open stream would wait.
            config = await asyncio.to_thread(load_config, self._path, os.environ)
            named = self._files_of(config)
        except Exception as exc:
            # Nothing of it was applied: only a change to the file can help.
            return self._refused(exc, serving, [], ())
        # Stamped before the new config reads them: one written after it was found
        # missing is seen as changed.
        named_stamps = await asyncio.to_thread(_stamps_of, named)
        try:
            await self._apply(config)
        except Exception as exc:
            return self._refused(exc, serving, named, named_stamps)
        self._waiting_on = []
        if self._watched() == named:
            # The files now watched were stamped before they were read: no second
            # reload for the change in which files are watched.
            self._stamp = (serving[0], *named_stamps)
        log.info("config reloaded from %s", self._path)
        self._on_result(True)
        return True

    def _refused(
        self,
        exc: Exception,
        serving: tuple[Stamp, ...],
        named: list[Path],
        named_stamps: tuple[Stamp, ...],
    ) -> bool:
        """Keep the running config; watch the files the refused one named as well."""
        if isinstance(exc, ConfigError):
            # Named by the config file, not by the part that found the mistake ("auth").
            in_file = ConfigError(str(self._path), exc.problems)
            log.error("config reload rejected, keeping the running config: %s", in_file)
        else:
            # Not a user error the loader names: still, the running config keeps
            # serving and the watcher keeps watching.
            log.error("config reload failed, keeping the running config", exc_info=exc)
        self._waiting_on = named
        self._stamp = (*serving, *named_stamps)
        self._on_result(False)
        return False

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            stamp = await self._stamps()
            if stamp[0] is not None and stamp != self._stamp:
                await self.reload()

    async def _stamps(self) -> tuple[Stamp, ...]:
        # Off the event loop: a poll stats the config file and every secret file (one
        # per org key_file, thousands in some configs), and a stat on a network volume
        # that stopped answering blocks until it answers again.
        paths = [self._path, *self._watched(), *self._waiting_on]
        return await asyncio.to_thread(_stamps_of, paths)

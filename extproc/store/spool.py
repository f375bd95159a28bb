"""A local, append-only spool for writes the store could not take, replayed later.

When the store is down, usage rollups and quota settlements are not dropped:
each failed batch is appended as one JSON line to a file under
``store.spool_dir``, and replayed in order once the store answers again.

A record is durable when ``append`` returns: the file is fsynced, and so is the
directory whenever a name in it changed (a file or directory created, the file
renamed into place or removed after a replay), since an fsynced file whose
directory entry is lost to a power cut is lost with it. Callers run ``append``
off the event loop: every fsync is disk I/O.

Every batch carries an id that the store-side scripts record, so a batch
replayed twice (say, after a timeout that had in fact succeeded) is counted once.

Several processes may share one spool (two ``serve`` from one config on one host,
gateways sharing the directory, a new supervisor while the old one's workers
drain), and threads of one process append while its replay runs. So every read,
append and rewrite of the file holds ``<kind>.lock`` beside it (``flock``, which
the kernel drops when the process dies, however it dies), briefly and off the
event loop; one replay at a time holds ``<kind>.replay.lock`` for as long as it
applies records, and another process finding it held leaves the replay to it.
A replay removes exactly the lines it applied, found again by their content
(each record has its own batch id), never a line spooled meanwhile, wherever the
file has been rewritten since. A line torn by a crash mid-append is closed
before the next record is written, so the torn line is the only one lost.

A line the replay cannot apply (torn, hand-edited, another version's, refused by
the store) is set aside in ``<kind>.rejected.jsonl``, once however often it is
replayed, for a person to look at: the store never gets it. What the spool does is reported to
a ``SpoolEvents`` (the gateway's metrics): batches written, batches the disk
refused (their writer keeps them in memory), and lines set aside, by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson
from redis.exceptions import RedisError, ResponseError

from extproc.store.outage_log import OutageLog

log = logging.getLogger(__name__)

# What reading a record of the wrong shape raises (a store error never means that).
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)
# Why a line is set aside: not JSON at all (torn by a crash mid-append, damaged), a
# record this version cannot apply (edited by hand, another version's), or one the
# store answers with an error about the record itself (a key of another type under
# the gateway's prefix, a counter the record would overflow).
UNREADABLE = "unreadable"
MALFORMED = "malformed"
REFUSED = "refused"
REJECT_REASONS = (UNREADABLE, MALFORMED, REFUSED)
# A store's error answers that say it cannot write now, whatever the record: a replica
# during a failover, loading its data, out of memory, a missing ACL or password, a
# full disk, a cluster resharding or without a quorum, a script not loaded yet. Any
# other error answer (WRONGTYPE, ERR...) is about the record: retrying it can only
# fail again, and would hold back every record after it.
_STORE_NOT_WRITABLE = frozenset(
    {
        "READONLY",
        "LOADING",
        "BUSY",
        "OOM",
        "NOPERM",
        "NOAUTH",
        "WRONGPASS",
        "MISCONF",
        "NOREPLICAS",
        "MASTERDOWN",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "MOVED",
        "ASK",
        "NOSCRIPT",
        "EXECABORT",
    }
)
# The spools the gateway keeps: usage rollups and quota settlements.
SPOOL_KINDS = ("usage", "quota")
# What reading a spool file raises when there is no file, or no directory to hold one
# (a file where the directory should be: nothing was ever written there).
_NO_FILE = (FileNotFoundError, NotADirectoryError)


def refused_by_store(exc: BaseException) -> bool:
    """The store answered with an error about the record itself: every try of it
    would meet the same answer (``WRONGTYPE``, ``NOTCOUNTER``, ``ERR``...)."""
    if not isinstance(exc, ResponseError):
        return False
    # redis-py's subclasses (a replica, a script not loaded, a cluster resharding or
    # down...) are all the store's state, never the record's.
    if type(exc) is not ResponseError:
        return False
    return _error_code(exc) not in _STORE_NOT_WRITABLE


def _error_code(exc: BaseException) -> str:
    """The first word of the store's answer (``WRONGTYPE``, ``ERR``...); a pipeline's
    error names its command first, then the answer."""
    message = str(exc)
    _, marker, answer = message.partition("caused error: ")
    words = (answer if marker else message).lstrip("(['\"").split(maxsplit=1)
    return words[0] if words else ""


class SpoolEvents(Protocol):
    """What a spool reports; the gateway's metrics (``GatewayMetrics``) implement it.
    Called from worker threads as well as the event loop."""

    def spool(self, kind: str) -> None:
        """A batch is on disk (fsynced), to be replayed."""

    def spool_write_error(self, kind: str) -> None:
        """The disk refused a batch: its writer holds it in memory, which a crash loses."""

    def spool_rejected(self, kind: str, reason: str) -> None:
        """A line was set aside in the rejected file: the store will not get it."""


class _Unobserved:
    """No one listening (tools and tests that build a spool on its own)."""

    def spool(self, kind: str) -> None:
        return None

    def spool_write_error(self, kind: str) -> None:
        return None

    def spool_rejected(self, kind: str, reason: str) -> None:
        return None


class Spool:
    def __init__(self, directory: str | Path, kind: str, events: SpoolEvents | None = None) -> None:
        self.path = Path(directory) / f"{kind}.jsonl"
        self.rejected_path = self.path.with_suffix(".rejected.jsonl")
        self.kind = kind
        # Held for each read, append and rewrite of the spool and rejected files, by
        # every thread and process (see the module's docstring).
        self.lock_path = lock_path(self.path)
        # Held by the process that replays, for the whole replay.
        self.replay_lock_path = self.path.with_suffix(".replay.lock")
        self._events: SpoolEvents = events if events is not None else _Unobserved()
        # One replay at a time in this process (on the event loop).
        self._lock = asyncio.Lock()
        # Each replay (every 0.5 s for usage) meets the outage: said once, not each time.
        self._paused = OutageLog(log, f"{kind} spool replay paused")

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and fsync it. Blocks on disk I/O: call it off the event loop.

        Raises ``OSError`` when the disk refuses it (full, read-only, gone): the caller
        still holds the record, and must keep it."""
        try:
            with hold_lock(self.lock_path):
                append_lines(self.path, orjson.dumps(record) + b"\n")
        except OSError:
            self._events.spool_write_error(self.kind)
            raise
        self._events.spool(self.kind)

    def pending(self) -> int:
        try:
            with self.path.open("rb") as spool:
                return sum(1 for line in spool if line.strip())
        except _NO_FILE:
            return 0

    async def replay(self, apply: Callable[[dict[str, Any]], Awaitable[None]]) -> int:
        """Apply spooled records in order; stop at the first failure. Returns how many
        were applied (and removed): none when another process is replaying this spool."""
        async with self._lock:
            taking = asyncio.ensure_future(asyncio.to_thread(self._take_replay_lock))
            try:
                replaying = await asyncio.shield(taking)
            except asyncio.CancelledError:
                # Stopping: the lock, once taken, must go with the replay, or no replay
                # would run again in any process until this one ends.
                taking.add_done_callback(_let_go)
                raise
            if replaying is None:
                return 0
            try:
                return await self._replay(apply)
            finally:
                os.close(replaying)

    def _take_replay_lock(self) -> int | None:
        """The replay lock's descriptor (closing it lets the lock go), or None when
        there is nothing to replay or another process is replaying."""
        try:
            if not self.path.exists():
                # Nothing spooled (and no directory to create a lock file in).
                return None
            descriptor = os.open(
                self.replay_lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666
            )
        except _NO_FILE:
            return None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Its replay applies these records, those of this process included.
            os.close(descriptor)
            return None
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor

    async def _replay(self, apply: Callable[[dict[str, Any]], Awaitable[None]]) -> int:
        lines = await asyncio.to_thread(self._read_lines)
        # The lines applied or set aside, to remove from the file.
        done: list[bytes] = []
        for line in lines:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                # Torn by a crash mid-append, or damaged: its usage cannot be read
                # back, but a person may still make something of what is there.
                log.error("an unreadable line in the %s spool: set aside", self.kind)
                await self._set_aside(line, UNREADABLE)
                done.append(line)
                continue
            try:
                await apply(record)
                self._paused.answered()
            except Exception as exc:
                if refused_by_store(exc):
                    # The store's error names the record (its code, never a value).
                    log.error(
                        "the store refuses a %s spool record (%s): set aside",
                        self.kind,
                        _error_code(exc) or type(exc).__name__,
                    )
                    await self._set_aside(line, REFUSED)
                elif not isinstance(exc, _MALFORMED) or isinstance(exc, RedisError):
                    # The store (or the disk) is not there yet, in whatever form
                    # the client reports it: the record waits.
                    self._paused.failed(exc)
                    break
                else:
                    # The record itself is wrong (hand-edited, another version's):
                    # set aside, so that it does not hold back every record after it.
                    log.exception("a %s spool record cannot be applied: set aside", self.kind)
                    await self._set_aside(line, MALFORMED)
            done.append(line)
        if done:
            await asyncio.to_thread(self._remove, done)
        return len(done)

    async def _set_aside(self, line: bytes, reason: str) -> None:
        if await asyncio.to_thread(self._keep_rejected, line):
            self._events.spool_rejected(self.kind, reason)

    def _keep_rejected(self, line: bytes) -> bool:
        """Add ``line`` to the rejected file unless it is there already; True if added.

        A replay cut short (a stop, a crash) after setting a line aside, before it
        dropped the line from the spool, meets it again at the next replay: kept once,
        a person applying the file by hand does not count it twice. Every record has
        its own batch id, so two equal lines are one record."""
        with hold_lock(self.lock_path):
            try:
                kept = self.rejected_path.read_bytes()
            except FileNotFoundError:
                kept = b""
            if line in kept.splitlines():
                return False
            append_lines(self.rejected_path, line + b"\n")
            return True

    def _read_lines(self) -> list[bytes]:
        # Under the lock: never half of a record an append is writing.
        with hold_lock(self.lock_path):
            return self._lines()

    def _lines(self) -> list[bytes]:
        try:
            data = self.path.read_bytes()
        except _NO_FILE:
            return []
        return [line for line in data.splitlines() if line.strip()]

    def _remove(self, done: list[bytes]) -> None:
        """Remove the lines ``done`` from the file, each once, wherever they are now.

        Not "the first ``len(done)`` lines": the file may have been rewritten since
        the replay read it (by a process of an earlier version, without the replay
        lock, or by hand), and a line counted by position would then be one spooled
        meanwhile, never applied."""
        with hold_lock(self.lock_path):
            lines = self._lines()
            to_remove = Counter(done)
            rest: list[bytes] = []
            for line in lines:
                if to_remove[line] > 0:
                    to_remove[line] -= 1
                else:
                    rest.append(line)
            if len(rest) == len(lines):
                return  # already gone (applied and removed by another replay)
            if not rest:
                self.path.unlink(missing_ok=True)
                # Else a power cut brings back records the store already has (counted
                # once thanks to their ids, but only while the store remembers them).
                sync_directory(self.path.parent)
                return
            temporary = self.path.with_suffix(".tmp")
            with temporary.open("wb") as spool:
                spool.write(b"".join(line + b"\n" for line in rest))
                spool.flush()
                os.fsync(spool.fileno())
            temporary.replace(self.path)
            # Until the rename is on disk, records appended to the new file (fsynced,
            # but under a name a power cut can undo) are not safe.
            sync_directory(self.path.parent)


def _let_go(taking: asyncio.Future[int | None]) -> None:
    """Close a replay lock taken for a replay that was stopped meanwhile."""
    if not taking.cancelled() and taking.exception() is None:
        descriptor = taking.result()
        if descriptor is not None:
            os.close(descriptor)


@contextlib.contextmanager
def hold_lock(path: Path) -> Iterator[None]:
    """Hold the lock file ``path`` (created, with its directory, if missing) against
    every other holder, thread or process. Blocks until it is free: call it off the
    event loop. The lock is the file's, never the spool's, which a replay replaces."""
    make_directory(path.parent)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        # Each open is its own lock holder (flock, unlike fcntl's record locks, which
        # a process holds once for all its threads).
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def lock_path(spool_file: Path) -> Path:
    """The lock of a spool file (``usage.jsonl``) and of its rejected lines
    (``usage.rejected.jsonl``): ``usage.lock``."""
    return spool_file.with_name(spool_file.name.split(".", 1)[0] + ".lock")


def move_lines(source: Path, target: Path) -> None:
    """Append the spool file ``source`` to ``target`` (a spool of the same kind
    elsewhere) and remove it, under both their locks: a process still spooling to
    ``source`` (an earlier supervisor's worker draining) waits, or finds it gone and
    starts a new one, never appends to a file about to be removed."""
    # Taken in one order, so that two processes moving each other's way both get on
    # (and once when both are one: a second flock of it would wait for the first).
    locks = sorted({lock_path(source), lock_path(target)})
    with contextlib.ExitStack() as held:
        for lock in locks:
            held.enter_context(hold_lock(lock))
        try:
            data = source.read_bytes()
        except _NO_FILE:
            return
        if data:
            # A source torn by a crash mid-append: closed, so the target's next
            # record is not glued to it.
            append_lines(target, data if data.endswith(b"\n") else data + b"\n")
        source.unlink()


def append_lines(path: Path, data: bytes) -> None:
    """Append whole lines to ``path`` and fsync them (the directory too when the file
    is new). When the file ends in a line torn by a crash mid-append, that line is
    closed first, so the new lines stay readable."""
    make_directory(path.parent)
    with path.open("ab+") as spool:
        created = spool.tell() == 0
        if not created:
            spool.seek(-1, os.SEEK_END)
            if spool.read(1) != b"\n":
                data = b"\n" + data
        spool.write(data)
        spool.flush()
        os.fsync(spool.fileno())
    if created:
        sync_directory(path.parent)


def make_directory(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each new name synced in its parent."""
    if directory.is_dir():
        return
    make_directory(directory.parent)
    directory.mkdir(exist_ok=True)
    sync_directory(directory.parent)


def sync_directory(directory: Path) -> None:
    """fsync a directory, which makes the names created, renamed or removed in it durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # A file system that cannot sync a directory (some network ones) gives what
        # it can; refusing to spool there would lose the record outright.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)

"""An embedded Valkey whose owner was killed: waited for, then stopped cleanly.

A gateway killed outright (SIGKILL, the OOM killer) cannot stop the embedded
Valkey it started: the server runs in a session of its own, so it goes on
serving its data dir with nobody left to stop it. The next start on that data
dir takes it over here instead of refusing, so that a restart after a crash
(systemd's ``Restart=always``, a supervisor loop) serves again by itself.

What makes the take-over safe:

* Only a server whose owner is gone is touched. The owner holds an exclusive
  ``flock`` on the data dir for the server's lifetime (``embedded._lock``), which
  the kernel drops when the owner dies, however it dies; the caller takes that
  lock before coming here, so a live gateway's server is never stopped (a second
  ``serve`` on its data dir is still refused). A lock says this without pid files,
  whose pid a new process may have taken since.
* Its last users finish first. The workers of a killed supervisor drain their
  open streams and flush their usage and settlements into that server for up to
  their grace period. Each holds a shared lock on ``users.lock`` while it uses the
  store (``use_store``), so the new start waits until it can take that lock
  exclusively: every such worker has exited (its flushes done), with no need to
  know their pids. A worker still there after the wait (stuck past its own
  deadline) refuses the start, with its pid: its store is not pulled from under it.
* The server is stopped with ``SHUTDOWN``: it writes out and fsyncs its AOF before
  it exits, so the everysec window of writes a SIGKILL would lose is kept. The new
  server reads that AOF back, so the usage and quota counters recorded before the
  crash are there. Nothing is started on the data dir before the old server has
  exited: two servers appending to one AOF lose whatever the first one wrote.

Stopping it rather than adopting it keeps one kind of server to watch: one the
gateway started itself, whose exit it sees (``keep_running``) and which it stops
with a signal; a stranger's server can only be pinged.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

log = logging.getLogger(__name__)

USERS_FILE = "users.lock"
# Beyond a killed supervisor's grace period: its workers' wait for the streams cut at
# its end (5 s) and their last flushes, as their supervisor would have allowed.
USERS_SLACK_S = 15.0
# How long the old server may take to exit once told to (its AOF's last fsync).
EXIT_TIMEOUT_S = 10.0
_POLL_S = 0.1


class LeftServerError(RuntimeError):
    """The server left on the data dir cannot be taken over (still used, or it would
    not stop); the message says what to do."""


def use_store(data_dir: str | Path) -> int:
    """Mark this process as a user of the embedded Valkey serving ``data_dir``, for as
    long as the returned descriptor stays open (the kernel lets go when the process
    ends). A start that finds the server's owner gone waits for every such user."""
    path = Path(data_dir).resolve() / USERS_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # Held exclusively only for the instant a new start checks it: blocking is brief.
        fcntl.flock(descriptor, fcntl.LOCK_SH)
    except OSError:
        os.close(descriptor)
        raise
    return descriptor


def take_over(data_dir: Path, url: str, users_wait_s: float) -> None:
    """Stop the server at ``url`` left on ``data_dir`` by an owner that is gone, once its
    last users have exited (waiting up to ``users_wait_s``). The caller holds the data
    dir's lock. Raises ``LeftServerError`` when a user stays or the server will not stop."""
    log.warning(
        "an embedded Valkey left by a gateway that was killed still serves %s at %s:"
        " stopping it (its AOF written out) to start this gateway's own",
        data_dir,
        url,
    )
    _wait_for_users(data_dir, url, users_wait_s)
    _shut_down(url)


def _wait_for_users(data_dir: Path, url: str, wait_s: float) -> None:
    path = data_dir / USERS_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # closing the file below lets the lock go
            except BlockingIOError:
                pass
            pids = lock_holders(path)
            if time.monotonic() >= deadline:
                raise LeftServerError(
                    f"processes of a killed gateway ({named(pids)}) still use the embedded"
                    f" Valkey left on {data_dir} at {url} after {wait_s:.0f}s: stop them,"
                    " then start again"
                )
            if not said:
                log.warning(
                    "waiting up to %.0fs for the workers of the killed gateway (%s) to"
                    " finish draining into that store",
                    wait_s,
                    named(pids),
                )
                said = True
            time.sleep(_POLL_S)
    finally:
        os.close(descriptor)


def _shut_down(url: str) -> None:
    # No retry: SHUTDOWN's answer is its connection closing, which must not send it again.
    no_retry = Retry(NoBackoff(), 0)
    with redis.Redis.from_url(url, socket_timeout=EXIT_TIMEOUT_S, retry=no_retry) as client:
        try:
            pid = int(client.info("server")["process_id"])
        except RedisConnectionError:
            return  # exited meanwhile: nothing left to stop
        except RedisError as exc:
            raise LeftServerError(_cannot_stop(url, f"it did not answer: {exc}")) from None
        started = _start_time(pid)
        try:
            # Not NOSAVE: the AOF is flushed and fsynced before the server exits.
            client.shutdown()
        except RedisError as exc:
            raise LeftServerError(_cannot_stop(url, f"it refused: {exc}")) from None
    # Its pid out of sight (another pid namespace): SHUTDOWN closing the connection,
    # after the AOF's last fsync, is then all there is to go by.
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while started is not None and _start_time(pid) == started:
        if time.monotonic() >= deadline:
            raise LeftServerError(
                _cannot_stop(url, f"pid {pid} still runs {EXIT_TIMEOUT_S:.0f}s after SHUTDOWN")
            )
        time.sleep(_POLL_S)


def _cannot_stop(url: str, why: str) -> str:
    return (
        f"the embedded Valkey left at {url} by a killed gateway cannot be stopped ({why};"
        " valkey.log in the data dir says more): stop it, then start again"
    )


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (kernel ticks since boot), None once it has exited
    (a zombie included): with the pid alone, one a new process took would look alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: fields count from its end.
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] == "Z" else fields[19]


def lock_holders(path: Path) -> list[int]:
    """The pids holding a lock on ``path`` (Linux's ``/proc/locks``), for messages;
    none where that cannot be read."""
    try:
        info = path.stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return []
    # Matched on the inode alone: the device /proc/locks names is the filesystem's own
    # (an overlay's lower one, say), which stat() may report otherwise.
    inode = str(info.st_ino)
    pids = set()
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  READ  1234 08:01:5678 0 EOF"; a waiter's line has "->".
        if len(fields) >= 6 and fields[1] != "->" and fields[5].rpartition(":")[2] == inode:
            pids.add(int(fields[4]))
    return sorted(pids)


def named(pids: list[int]) -> str:
    return "pid " + ", ".join(map(str, pids)) if pids else "pids unknown"

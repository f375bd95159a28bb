"""A gateway killed outright leaves its embedded Valkey running (it has a session of its
own); the next start on that data dir takes it over instead of refusing to start: it
waits for the killed gateway's workers to finish draining into it, stops it with its
AOF written out, and serves the same data from a server of its own. A data dir whose
owner still lives stays refused, and so does one whose left server runs but does not
answer (stopped with SIGSTOP): never a second server on one AOF.

Owners here are real processes, killed with SIGKILL; every process a test starts, the
servers they leave included, is stopped by pid."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from extproc.store import embedded, orphaned
from extproc.store.embedded import DataDirInUseError, EmbeddedValkey

OWNER = """
import sys, time
from extproc.store.embedded import EmbeddedValkey
print(EmbeddedValkey(sys.argv[1]).start(), flush=True)
time.sleep(600)
"""
# Killed as its server answers for the first time, before start() returns: while a
# large AOF loads, that window lasts seconds.
KILLED_WHILE_STARTING = """
import os, signal, sys
from extproc.store import embedded
answering = embedded._wait_until_answering
def then_killed(process, port):
    answering(process, port)
    print(f"redis://127.0.0.1:{port}/0", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
embedded._wait_until_answering = then_killed
embedded.EmbeddedValkey(sys.argv[1]).start()
"""
# Killed the instant its server was spawned, before that server listens.
KILLED_AS_ITS_SERVER_SPAWNS = """
import os, signal, subprocess, sys
from extproc.store import embedded
spawn = subprocess.Popen
def spawned_then_killed(*args, **kwargs):
    server = spawn(*args, **kwargs)
    print(server.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
subprocess.Popen = spawned_then_killed
embedded.EmbeddedValkey(sys.argv[1]).start()
"""
# Killed as its stop begins, before its server was told to stop.
KILLED_AS_IT_STOPS = """
import os, signal, sys
from extproc.store import embedded
store = embedded.EmbeddedValkey(sys.argv[1])
print(store.start(), flush=True)
embedded._terminate = lambda process: os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.readline()
store.stop()
"""
# Only a bound, so that a test whose start never ends fails instead of hanging.
BOUND_S = 60.0


@dataclass
class Owner:
    """A process that started an embedded Valkey on ``data_dir`` and owns it."""

    process: subprocess.Popen[str]
    url: str
    server_pid: int

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5.0, socket_connect_timeout=1.0)

    def kill(self) -> None:
        """SIGKILL, as the OOM killer ends a gateway: nothing of it runs any more."""
        self.process.kill()
        self.process.wait()


def freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until the kernel has stopped it (a signal is delivered
    when the process next runs, not when it is sent)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + BOUND_S
    while Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "T":
        assert time.monotonic() < deadline, f"pid {pid} did not stop"
        time.sleep(0.01)


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def owners(tmp_path: Path) -> Iterator[list[Owner]]:
    """Owners started with ``start_owner``; at the end each one and its server are
    stopped (a SIGKILL ends no child: the server would run on after the test)."""
    started: list[Owner] = []
    yield started
    for owner in started:
        if owner.process.poll() is None:
            owner.kill()
        if running(owner.server_pid):
            # A stopped one holds a SIGTERM until it is resumed.
            os.kill(owner.server_pid, signal.SIGCONT)
            os.kill(owner.server_pid, signal.SIGTERM)


def start_owner(owners: list[Owner], data_dir: Path, script: str = OWNER) -> Owner:
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    assert url.startswith("redis://"), "the owner did not start its server"
    with redis.Redis.from_url(url) as client:
        owner = Owner(process, url, int(client.info("server")["process_id"]))
    owners.append(owner)
    return owner


@pytest.fixture
def started() -> Iterator[list[EmbeddedValkey]]:
    """Servers this process started: stopped at the end, whatever the test did."""
    servers: list[EmbeddedValkey] = []
    yield servers
    for server in servers:
        server.stop()


def test_a_restart_after_the_owner_was_killed_serves_the_data_it_left(
    tmp_path: Path, owners: list[Owner], started: list[EmbeddedValkey]
) -> None:
    owner = start_owner(owners, tmp_path)
    with owner.client() as client:
        client.set("aigw:usage:before-the-crash", 42)
    owner.kill()
    assert running(owner.server_pid), "the killed owner's server runs on, unowned"

    restarted = EmbeddedValkey(tmp_path)
    started.append(restarted)
    url = restarted.start()

    # One server on the data dir: the left one has exited, the new one has its data.
    assert not running(owner.server_pid)
    with redis.Redis.from_url(url) as client:
        assert client.get("aigw:usage:before-the-crash") == b"42"
        assert int(client.info("server")["process_id"]) != owner.server_pid
    assert (tmp_path / embedded.ENDPOINT_FILE).read_text().strip() == url


def servers_on(data_dir: Path) -> list[int]:
    """The pids of the Valkey servers running in ``data_dir`` (their working directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if (
                proc.name.isdigit()
                and (proc / "cwd").readlink() == data_dir
                and running(int(proc.name))
            ):
                found.append(int(proc.name))
    return found


def test_an_owner_killed_while_its_server_starts_leaves_no_second_server(
    tmp_path: Path, owners: list[Owner], started: list[EmbeddedValkey]
) -> None:
    """Killed before start() returned (its server loading a large AOF, say): the next
    start must still find that server, or two would append to one AOF."""
    owner = start_owner(owners, tmp_path, KILLED_WHILE_STARTING)
    owner.process.wait()
    assert servers_on(tmp_path) == [owner.server_pid]

    restarted = EmbeddedValkey(tmp_path)
    started.append(restarted)
    restarted.start()

    [server] = servers_on(tmp_path)
    assert server != owner.server_pid


def test_a_live_owners_data_dir_is_refused_and_its_server_left_alone(
    tmp_path: Path, owners: list[Owner]
) -> None:
    owner = start_owner(owners, tmp_path)

    with pytest.raises(DataDirInUseError) as refused:
        EmbeddedValkey(tmp_path, users_wait_s=BOUND_S).start()

    assert f"pid {owner.process.pid}" in str(refused.value)
    assert str(tmp_path) in str(refused.value)
    with owner.client() as client:
        assert client.ping()
    assert running(owner.server_pid)


def test_the_killed_owners_workers_drain_into_its_server_before_it_is_stopped(
    tmp_path: Path,
    owners: list[Owner],
    started: list[EmbeddedValkey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A supervisor killed with SIGKILL leaves workers that drain their streams and
    flush their usage into its server; the new start must not stop it under them."""
    owner = start_owner(owners, tmp_path)
    worker = orphaned.use_store(tmp_path)  # a worker of that owner, draining
    owner.kill()
    caplog.set_level(logging.WARNING, logger=orphaned.__name__)
    restarted = EmbeddedValkey(tmp_path, users_wait_s=BOUND_S)
    started.append(restarted)
    outcome: list[str | BaseException] = []

    def start() -> None:
        try:
            outcome.append(restarted.start())
        except BaseException as exc:
            outcome.append(exc)

    starting = threading.Thread(target=start)
    starting.start()
    try:
        waiting = threading.Event()
        while not outcome and not waiting.wait(0.05):
            if any("waiting up to" in r.getMessage() for r in caplog.records):
                waiting.set()
        assert not outcome, outcome
        # The worker's last flush lands in the server it has been using all along.
        with owner.client() as client:
            client.set("aigw:usage:drained", 7)
    finally:
        os.close(worker)  # the worker exits
        starting.join(BOUND_S)
    [url] = outcome
    assert isinstance(url, str), url
    assert not running(owner.server_pid)
    with redis.Redis.from_url(url) as client:
        assert client.get("aigw:usage:drained") == b"7"
    [said] = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
    assert f"pid {os.getpid()}" in said


def test_a_worker_still_there_after_the_wait_keeps_its_store(
    tmp_path: Path, owners: list[Owner]
) -> None:
    owner = start_owner(owners, tmp_path)
    worker = orphaned.use_store(tmp_path)
    owner.kill()
    try:
        with pytest.raises(DataDirInUseError, match=f"pid {os.getpid()}"):
            EmbeddedValkey(tmp_path, users_wait_s=0.2).start()
        # Not stopped under the worker, and the data dir is free for the next try.
        with owner.client() as client:
            assert client.ping()
    finally:
        os.close(worker)
    again = EmbeddedValkey(tmp_path)
    again.start()
    again.stop()
    assert not running(owner.server_pid)


def test_a_left_server_that_does_not_answer_refuses_the_start_and_no_second_one_starts(
    tmp_path: Path,
    owners: list[Owner],
    started: list[EmbeddedValkey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stopped with SIGSTOP (or swapping, or busy): its silence is not its absence. Taken
    for gone, a second server was started on its AOF, and the two lost each other's
    writes. The start waits a bounded time, then refuses, naming the pid and what to do."""
    owner = start_owner(owners, tmp_path)
    with owner.client() as client:
        client.set("aigw:usage:before-the-crash", 42)
    owner.kill()
    freeze(owner.server_pid)
    try:
        caplog.set_level(logging.WARNING, logger=embedded.__name__)
        refused_start = EmbeddedValkey(tmp_path, left_answer_wait_s=1.0)
        started.append(refused_start)  # stopped at the end, should it start after all
        with pytest.raises(DataDirInUseError) as refused:
            refused_start.start()

        assert servers_on(tmp_path) == [owner.server_pid]
        message = str(refused.value)
        assert f"pid {owner.server_pid}, stopped" in message
        assert f"kill -CONT {owner.server_pid}" in message
        assert str(tmp_path) in message
        assert any(f"pid {owner.server_pid}" in r.getMessage() for r in caplog.records)
    finally:
        os.kill(owner.server_pid, signal.SIGCONT)

    # Resumed, it answers: the next start takes it over, its data kept, and the data
    # dir's lock was let go by the refused start.
    restarted = EmbeddedValkey(tmp_path)
    started.append(restarted)
    url = restarted.start()
    [server] = servers_on(tmp_path)
    assert server != owner.server_pid
    with redis.Redis.from_url(url) as client:
        assert client.get("aigw:usage:before-the-crash") == b"42"


def test_an_owner_killed_as_its_server_spawns_leaves_it_to_the_next_start(
    tmp_path: Path, owners: list[Owner], started: list[EmbeddedValkey]
) -> None:
    """Killed between spawning its server and naming its address: the server, not
    listening yet, was not found, and a second one started beside it."""
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_AS_ITS_SERVER_SPAWNS, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    server_pid = int(process.stdout.readline())
    owners.append(Owner(process, "", server_pid))
    process.wait()
    assert running(server_pid)

    restarted = EmbeddedValkey(tmp_path)
    started.append(restarted)
    restarted.start()

    [server] = servers_on(tmp_path)
    assert server != server_pid
    assert not running(server_pid)


def test_keep_running_leaves_a_stopped_server_alone(
    tmp_path: Path, started: list[EmbeddedValkey]
) -> None:
    """The gateway's own server, stopped with SIGSTOP, has not exited: what restarts it
    is its exit status (a waitpid), which a stop does not give, never a missed ping."""
    store = EmbeddedValkey(tmp_path)
    started.append(store)
    store.start()
    [pid] = servers_on(tmp_path)
    freeze(pid)
    try:
        assert store.exited() is None
        store.restart()
        assert servers_on(tmp_path) == [pid]
    finally:
        os.kill(pid, signal.SIGCONT)


def test_an_owner_killed_as_it_stops_its_server_leaves_it_to_the_next_start(
    tmp_path: Path, owners: list[Owner], started: list[EmbeddedValkey]
) -> None:
    """Killed in the middle of its stop (a supervisor's stop timeout ending in SIGKILL):
    the server's address went first, so the next start found the server only by its
    process, could not reach it, and refused the data dir until an operator stopped it."""
    owner = start_owner(owners, tmp_path, KILLED_AS_IT_STOPS)
    with owner.client() as client:
        client.set("aigw:usage:before-the-stop", 3)
    assert owner.process.stdin is not None
    owner.process.stdin.write("stop\n")
    owner.process.stdin.flush()
    owner.process.wait()
    assert running(owner.server_pid)

    restarted = EmbeddedValkey(tmp_path, left_answer_wait_s=1.0)
    started.append(restarted)
    url = restarted.start()

    [server] = servers_on(tmp_path)
    assert server != owner.server_pid
    with redis.Redis.from_url(url) as client:
        assert client.get("aigw:usage:before-the-stop") == b"3"


def test_two_servers_left_on_one_data_dir_are_both_taken_over(
    tmp_path: Path, started: list[EmbeddedValkey]
) -> None:
    """Two servers on one AOF, as a start before processes were looked for left them:
    the endpoint file names only the last one, the other is asked where it listens."""
    first = embedded._launch(tmp_path, embedded.free_port())
    second = embedded._launch(tmp_path, embedded.free_port())  # the endpoint names it
    try:
        assert sorted(servers_on(tmp_path)) == sorted([first.pid, second.pid])
        restarted = EmbeddedValkey(tmp_path, left_answer_wait_s=1.0)
        started.append(restarted)
        restarted.start()

        [server] = servers_on(tmp_path)
        assert server not in (first.pid, second.pid)
    finally:
        for left in (first, second):
            embedded._terminate(left)


def test_a_stopped_server_is_stopped_cleanly_with_its_gateway(
    tmp_path: Path, started: list[EmbeddedValkey]
) -> None:
    """The gateway stops its store with SIGTERM, which a server stopped with SIGSTOP
    holds until it runs again: it was SIGKILLed once the wait was over, its AOF not
    written out. Resumed along with the SIGTERM, it writes its AOF out and exits 0."""
    store = EmbeddedValkey(tmp_path)
    started.append(store)
    store.start()
    process = store._process
    assert process is not None
    with redis.Redis.from_url(store.url) as client:
        client.set("aigw:usage:last", 1)
    freeze(process.pid)
    try:
        store.stop()
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
    assert process.returncode == 0
    assert "ready to exit" in (tmp_path / embedded.LOG_FILE).read_text().lower()

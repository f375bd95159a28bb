"""The Valkey servers running on a data dir, found through Linux's ``/proc``.

A start that finds the data dir's lock free asks the server at the address in the
endpoint file whether it still runs there. That question needs an answer: a server
stopped with SIGSTOP, swapping, or between its spawn and its first answer does not
give one in time, and taking its silence for absence started a second server on the
same AOF (two servers appending to one AOF lose whatever the first one wrote). Its
process says it is there whether it answers or not: the embedded server runs with
the data dir as its working directory (it is started there and changes to its
``dir``), which ``/proc/<pid>/cwd`` shows. Its command line does not say where its
files are (the server overwrites it with its title, ``valkey-server 127.0.0.1:PORT``),
but it says where it listens: a server the endpoint file does not name (a second one,
started beside the first before this check existed) can still be asked.

Each look identifies the processes afresh, by name and directory, and none is ever
sent a signal: a pid another process has taken since is never mistaken for the
server. Processes this user may not look into (another user's) are skipped: they cannot
hold this user's data dir anyway, and where ``/proc`` cannot be read (another OS, a
server in another pid namespace) nothing is found, and the endpoint's answer is all
there is to go by, as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# The kernel's name of the process (its executable's, cut to 15 characters); the
# embedded one is valkey-server, a Redis one on the same files would do the same harm.
SERVER_NAMES = frozenset({"valkey-server", "redis-server"})
_PROC = Path("/proc")
# The listening address in the server's title ("valkey-server 127.0.0.1:PORT", then
# "[cluster]" or nothing), or its arguments before it has set its title ("--port PORT").
_TITLE_PORT = re.compile(rb"\s\S*:(\d+)(?:\s|$)")
_ARGUMENT_PORT = re.compile(rb"(?:^|\0)--port\0(\d+)(?:\0|$)")
# What an operator reads in a state letter of /proc/<pid>/stat.
_STATES = {
    "T": "stopped",
    "t": "stopped by a debugger",
    "D": "waiting on the disk",
    "R": "running",
    "S": "sleeping",
}


@dataclass(frozen=True)
class ServerProcess:
    pid: int
    # The state letter of /proc/<pid>/stat: T for one stopped with SIGSTOP.
    state: str
    parent: int
    # Where it listens, as its command line says (None where it does not say).
    port: int | None = None

    def __str__(self) -> str:
        state = _STATES.get(self.state, f"state {self.state}")
        return f"pid {self.pid}, {state}"


def on_data_dir(data_dir: str | Path) -> list[ServerProcess]:
    """The live Valkey servers whose working directory is ``data_dir``, by pid.

    A server's forks (its AOF rewrite, an RDB save) run there too under the same name;
    they write files of their own and end with their parent's work, so only the
    servers themselves are named."""
    wanted = str(Path(data_dir).resolve())
    found = []
    try:
        entries = list(_PROC.iterdir())
    except OSError:
        return []
    for entry in entries:
        if entry.name.isdigit():
            process = _server_in(entry, wanted)
            if process is not None:
                found.append(process)
    servers = {process.pid for process in found}
    return sorted(
        (process for process in found if process.parent not in servers), key=lambda p: p.pid
    )


def _server_in(entry: Path, data_dir: str) -> ServerProcess | None:
    try:
        # The name first: readable for every process and cheap, so the working directory
        # is read only for the few servers on the host.
        if (entry / "comm").read_text().strip() not in SERVER_NAMES:
            return None
        if str((entry / "cwd").readlink()) != data_dir:
            return None
        stat = (entry / "stat").read_text()
        command_line = (entry / "cmdline").read_bytes()
    except OSError:
        return None  # exited meanwhile, or another user's
    # The command name, in parentheses, may hold spaces: fields count from its end.
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):
        return None  # exited, not reaped yet: it writes nothing any more
    return ServerProcess(
        pid=int(entry.name),
        state=fields[0],
        parent=int(fields[1]),
        port=_port(command_line),
    )


def _port(command_line: bytes) -> int | None:
    """The port of a server's title, or of its arguments (the title not set yet)."""
    found = _ARGUMENT_PORT.search(command_line)
    if found is None:
        # The title is the first argument, padded with NULs over the rest.
        found = _TITLE_PORT.search(command_line.partition(b"\0")[0])
    return int(found.group(1)) if found else None

"""A process that imports the gateway once and forks the test stacks' gateways and mocks.

Run as ``python -m tests.integration.fork_server SOCKET`` by tests/integration/forked.py,
one per test process. Every stack the integration tests start runs ``python -m extproc
serve`` and ``python -m extproc mock-llm``, and each of those spent most of its start
(about 1.3 s and 0.5 s of CPU) importing the package, its dependencies and their regexes
and pydantic models: nearly 170 stacks a suite, on two cores. This process does that once;
each start is then a fork of it that runs the same ``extproc`` command line
(``extproc.cli.main``) in the environment, working directory and output files the test
asked for, in a session of its own, as ``subprocess.Popen`` would have started it.

Protocol, one Unix-socket connection per process: the test sends one JSON line (``argv``
without the interpreter, ``env``, ``cwd``, ``stdout``, ``stderr``); this server answers
with the child's pid on a line and, when the child ends, its return code (negative: the
signal that ended it) on a second line, then closes the connection. It exits when its
standard input closes: the test process that started it has ended.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import selectors
import socket
import sys
import types
from typing import Any

import orjson


def _preload() -> None:
    """Import what ``extproc serve`` and ``extproc mock-llm`` import, and freeze it."""
    import extproc.cli
    import extproc.mock_llm
    import extproc.server
    import extproc.workers  # noqa: F401

    # Imported modules live as long as every child: out of the collector's passes.
    gc.collect()
    gc.freeze()


def serve(path: str) -> dict[str, Any]:
    """Fork a child per request until standard input closes; returns only in a child,
    with the request it is to run."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(sys.stdin, selectors.EVENT_READ, "parent")
    # pidfd -> (pid, the connection its return code goes to)
    running: dict[int, tuple[int, socket.socket]] = {}
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            if key.data == "parent":
                if not os.read(sys.stdin.fileno(), 1024):
                    raise SystemExit(0)
            elif key.data == "accept":
                conn, _ = listener.accept()
                request = orjson.loads(_read_line(conn))
                pid = os.fork()
                if pid == 0:
                    # The child keeps none of the server's descriptors.
                    selector.close()
                    listener.close()
                    for pidfd, (_, other) in running.items():
                        os.close(pidfd)
                        other.close()
                    conn.close()
                    return dict(request)
                pidfd = os.pidfd_open(pid)
                running[pidfd] = (pid, conn)
                selector.register(pidfd, selectors.EVENT_READ, "exit")
                _send(conn, str(pid))
            else:
                pid, conn = running.pop(key.fd)
                selector.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                _send(conn, str(os.waitstatus_to_exitcode(status)))
                conn.close()


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _send(conn: socket.socket, line: str) -> None:
    # OSError: the test gave up on this process (or ended), and nobody is left to tell.
    with contextlib.suppress(OSError):
        conn.sendall(line.encode() + b"\n")


def run_child(request: dict[str, Any]) -> None:
    """Become ``python -m extproc <argv>`` as Popen(start_new_session=True) starts it."""
    os.setsid()
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    stderr = os.open(request["stderr"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for source, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(source, target)
        os.close(source)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv: list[str] = request["argv"]
    # What `python -m extproc` makes of __main__ and argv: worker processes (started by
    # multiprocessing's spawn) find the module to run from __main__'s spec.
    spec = importlib.util.find_spec("extproc.__main__")
    assert spec is not None and spec.origin is not None
    main_module = types.ModuleType("__main__")
    main_module.__spec__ = spec
    main_module.__file__ = spec.origin
    sys.modules["__main__"] = main_module
    sys.argv = [spec.origin, *argv]
    from extproc.cli import main

    raise SystemExit(main(argv))


if __name__ == "__main__":
    _preload()
    run_child(serve(sys.argv[1]))

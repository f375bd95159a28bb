"""Stacks whose gateways and mocks are forked from a process that imported the package once.

``ForkedStack`` is the LocalStack the integration tests start (``running_stack``): where
LocalStack runs ``python -m extproc ...`` with ``subprocess.Popen``, it asks this test
process's fork server (tests/integration/fork_server.py) to run the same command line in
the same environment, directory and output files, in a session of its own. The process it
hands back answers what the tests ask of a Popen (pid, poll, wait, send_signal, kill,
returncode), the return code reported by the fork server, which is the child's parent.
The gateway runs its own code from ``extproc.cli.main`` on, as `make run` starts it; what
it no longer pays is the interpreter's start and the imports, about 1.8 s of CPU a stack.
``run_extproc`` does the same for the CLI commands tests run as an operator would (a usage
report polled until a request shows in it started an interpreter each time).

Not forked (started by Popen, as LocalStack does): Envoy, anything but ``python -m extproc``,
and any command whose environment sets ``PYTHON*`` variables the fork server was not
started with (the interpreter reads those at its start, which a fork skips).
``AIGW_TEST_FORK_SERVER=0`` turns forking off.
"""

from __future__ import annotations

import atexit
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from extproc.devstack import LocalStack

ENABLED = os.environ.get("AIGW_TEST_FORK_SERVER", "1") != "0"
# How long a fork server may take to import the package, on a loaded machine.
START_TIMEOUT_S = 60.0


class ForkedProcess(subprocess.Popen[bytes]):
    """A process the fork server started, with the Popen methods the tests use."""

    def __init__(self, conn: socket.socket, args: list[str]) -> None:
        # Popen's own __init__ starts a process: not called. These are the attributes
        # its other methods (repr, __del__, the context manager) read.
        self.args = args
        self.stdin = self.stdout = self.stderr = None
        self.returncode: int | None = None
        self._child_created = False
        self._conn = conn
        self._lines = conn.makefile("rb")
        pid = self._lines.readline()
        if not pid:
            raise RuntimeError(f"the fork server did not start {args[3:]}")
        self.pid = int(pid)

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read_code(timeout_s=0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and not self._read_code(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def _read_code(self, timeout_s: float | None) -> bool:
        with selectors.DefaultSelector() as selector:
            selector.register(self._conn, selectors.EVENT_READ)
            if not selector.select(timeout_s):
                return False
        line = self._lines.readline()
        # No line: the fork server ended before the child (its test process is ending).
        self.returncode = int(line) if line.strip() else -signal.SIGKILL
        self._lines.close()
        self._conn.close()
        return True

    def send_signal(self, sig: int) -> None:
        # As Popen: a process known to have ended is not signalled (its pid may be reused).
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _ForkServer:
    """This test process's fork server, started on first use."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._socket = Path()
        # The interpreter settings a fork inherits: commands asking for others are not forked.
        self.python_env = _python_variables(os.environ)

    def spawn(
        self, argv: list[str], env: dict[str, str], stdout: Path, stderr: Path
    ) -> ForkedProcess:
        if self._process is None:
            self._start()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(self._socket))
        request = {
            "argv": argv[3:],
            "env": env,
            "cwd": str(Path.cwd()),
            "stdout": str(stdout),
            "stderr": str(stderr),
        }
        conn.sendall(orjson.dumps(request) + b"\n")
        return ForkedProcess(conn, argv)

    def _start(self) -> None:
        # Its own directory under /tmp: a Unix socket's path has at most 107 bytes.
        self._socket = Path(tempfile.mkdtemp(prefix="aigw-fork-")) / "fork.sock"
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.fork_server", str(self._socket)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Where `-m tests...` is found, whatever directory a test moved to.
            cwd=Path(__file__).parents[2],
        )
        assert self._process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            ready = selector.select(START_TIMEOUT_S) and self._process.stdout.readline()
        if ready != b"ready\n":
            self._process.kill()
            raise RuntimeError(f"the fork server did not start (exit {self._process.wait()})")
        atexit.register(self.stop)

    def stop(self) -> None:
        """Close its standard input: it exits (the children it started run on)."""
        if self._process is not None and self._process.stdin is not None:
            self._process.stdin.close()
            self._process.wait(10)
            self._socket.unlink(missing_ok=True)
            self._socket.parent.rmdir()
            self._process = None


def _python_variables(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith("PYTHON")}


FORK_SERVER = _ForkServer()


def forkable(argv: list[str], env: dict[str, str]) -> bool:
    """Whether the fork server can run ``argv`` (``python -m extproc ...``) in ``env``."""
    return (
        ENABLED
        and argv[:3] == [sys.executable, "-m", "extproc"]
        and _python_variables(env) == FORK_SERVER.python_env
    )


def run_extproc(
    argv: list[str], env: dict[str, str], timeout_s: float = 60.0
) -> subprocess.CompletedProcess[bytes]:
    """``subprocess.run(argv, env=env, capture_output=True)`` for an ``extproc`` command
    (a usage report, a quota change), forked when it can be; the caller checks the code."""
    if not forkable(argv, env):
        return subprocess.run(argv, env=env, capture_output=True, timeout=timeout_s, check=False)
    with tempfile.TemporaryDirectory(prefix="aigw-cli-") as directory:
        stdout, stderr = Path(directory) / "stdout", Path(directory) / "stderr"
        process = FORK_SERVER.spawn(argv, env, stdout, stderr)
        try:
            code = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        return subprocess.CompletedProcess(argv, code, stdout.read_bytes(), stderr.read_bytes())


def run_extproc_text(
    argv: list[str], env: dict[str, str], timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``run_extproc`` with its output read as text (``subprocess.run(text=True)``)."""
    done = run_extproc(argv, env, timeout_s)
    return subprocess.CompletedProcess(
        argv, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


class ForkedStack(LocalStack):
    """A LocalStack whose ``python -m extproc`` processes the fork server starts."""

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], stdout: Path | None = None
    ) -> None:
        if not forkable(argv, env):
            super()._spawn(name, argv, env, stdout)
            return
        stdout = stdout or self.workdir / f"{name}.out"
        process = FORK_SERVER.spawn(argv, env, stdout, self.workdir / f"{name}.err")
        self._processes.append((name, process))

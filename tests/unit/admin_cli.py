"""Running the ``extproc`` admin commands in-process against a test's management API."""

from __future__ import annotations

import asyncio
import contextlib
import io

from extproc.cli import main


async def run_admin_cli(address: str, token: str, *args: str) -> tuple[int, str, str]:
    """``extproc <args> --address <address> --token <token>``: exit code, stdout, stderr.

    Run in a thread, as the command's own gRPC calls block while the test's event loop
    serves the API they call."""
    out, err = io.StringIO(), io.StringIO()
    argv = [*args, "--address", address, "--token", token]

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                return main(argv)
            except SystemExit as exc:
                return int(exc.code or 0)

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()

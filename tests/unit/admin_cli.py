"""Running the ``extproc`` admin commands in-process against a test's management API."""

from __future__ import annotations

import asyncio
import contextlib
import io
import tempfile
from pathlib import Path

from extproc.cli import main


async def run_admin_cli(address: str, token: str, *args: str) -> tuple[int, str, str]:
    """``extproc <args> --address <address> --token-file <a file holding token>``: exit
    code, stdout, stderr (the file, as an operator keeps a token out of the process list).

    Run in a thread, as the command's own gRPC calls block while the test's event loop
    serves the API they call."""
    with tempfile.TemporaryDirectory() as directory:
        token_file = Path(directory) / "admin-token"
        token_file.write_text(f"{token}\n")
        return await run_cli(*args, "--address", address, "--token-file", str(token_file))


async def run_cli(*argv: str) -> tuple[int, str, str]:
    """``extproc <argv>`` in a thread, in-process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                return main(list(argv))
            except SystemExit as exc:
                return int(exc.code or 0)

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()

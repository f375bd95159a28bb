"""Where the admin CLI takes its token from: ``--token-file``, ``--token`` or the environment.

``--token`` puts the token in the command line, which every user of the host can read
while the command runs (``ps``, ``/proc/<pid>/cmdline``) and shell history keeps: the
CLI still takes it, with a warning on stderr naming the alternatives.
``--token-file PATH`` reads the token from a file (a mounted Secret, a file only its
owner reads, ``/dev/stdin``), its surrounding spaces and line ends dropped as the
gateway drops them from its own ``token_file``. ``AIGW_ADMIN_TOKEN`` is read when
neither is given. A file that cannot give a token (missing, unreadable, empty, not
text) is an ``AdminTokenError`` naming the path and the reason, never what it holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENVIRONMENT = "AIGW_ADMIN_TOKEN"
# No admin token is anywhere near this long: a larger file is the wrong one (or a
# device that never ends, such as /dev/zero), read no further.
MAX_FILE_BYTES = 64 * 1024
COMMAND_LINE_WARNING = (
    "warning: --token puts the admin token on the command line, where other users of"
    " this host can read it while the command runs (ps) and shell history keeps it:"
    " use --token-file PATH or AIGW_ADMIN_TOKEN instead"
)


class AdminTokenError(Exception):
    """No token can be taken from where the command line says (a usage error: exit 2)."""


@dataclass(frozen=True, slots=True)
class AdminToken:
    value: str
    # Where it came from, as a person would look there: "--token-file /etc/aigw/token".
    source: str


def admin_token(token: str | None, token_file: str | None) -> AdminToken:
    """The token of ``--token-file``, else of ``--token``, else of the environment.

    ``AdminTokenError`` when none is given, or the file gives none."""
    if token_file is not None:
        return AdminToken(_read(token_file), f"--token-file {token_file}")
    if token:
        return AdminToken(token, "--token")
    from_environment = os.environ.get(ENVIRONMENT, "")
    if from_environment:
        return AdminToken(from_environment, ENVIRONMENT)
    raise AdminTokenError(
        f"no admin token: pass --token-file PATH, set {ENVIRONMENT}, or pass --token"
    )


def _read(path: str) -> str:
    where = f"the admin token file {path}"
    try:
        with Path(path).open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        # The reason only (no such file, permission denied, is a directory).
        reason = exc.strerror or type(exc).__name__
        raise AdminTokenError(f"cannot read {where}: {reason}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise AdminTokenError(
            f"{where} is larger than {MAX_FILE_BYTES} bytes: no admin token is, check the path"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AdminTokenError(f"{where} is not text (not UTF-8): check the path") from None
    token = text.strip()
    if not token:
        raise AdminTokenError(f"{where} is empty")
    return token

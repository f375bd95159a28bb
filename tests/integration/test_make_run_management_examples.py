"""The management commands `make run` prints work as printed, on every run.

`make run` keeps its store under `.data` from one run to the next, and a revoked key's
id stays retired. The printed example created, rotated and revoked one fixed id
(`my-team`), so on every run after the first, `keys create` was refused (the id was
retired), and so were `rotate` and `revoke` (the key was revoked): three of its four
commands failed as printed.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

import httpx

from extproc.devstack import LocalStack, examples

CLI = ".venv/bin/extproc"


def management_commands(printed: str) -> list[str]:
    """The printed management block's commands, comments dropped, the CLI run from this
    Python (the checkout's `.venv/bin/extproc` is that of whichever checkout ran it)."""
    block = printed.split("# Management", 1)[1].split("Ctrl-C", 1)[0]
    commands = []
    for line in block.splitlines()[1:]:  # the heading's own line is a comment
        command = line.split("#", 1)[0].strip()
        if command:
            commands.append(command.replace(CLI, f"{shlex.quote(sys.executable)} -m extproc"))
    return commands


def run_printed(stack: LocalStack, printed: str) -> list[tuple[str, int, str]]:
    """Each command of the block in one shell, as an operator pastes it: (command, exit
    code, stderr) of each."""
    env = stack.env
    results = []
    for command in management_commands(printed):
        if command.startswith("export "):
            name, value = command.removeprefix("export ").split("=", 1)
            env[name] = value
            continue
        done = subprocess.run(
            ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60
        )
        results.append((command, done.returncode, done.stderr))
    return results


def test_the_printed_key_commands_work_on_a_second_run_too(stack: LocalStack) -> None:
    # The first printed example, so the stack has served a request as after any make run.
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
    headers = {"authorization": "Bearer team1-key"}
    reply = httpx.post(f"{stack.base_url}/v1/chat/completions", json=chat, headers=headers)
    assert reply.status_code == 200
    for run in ("first", "second"):
        printed = examples(stack, "mock")
        results = run_printed(stack, printed)
        verbs = [command.split(" keys ", 1)[1].split()[0] for command, _, _ in results]
        assert verbs == ["create", "list", "rotate", "revoke"], results
        failed = [(command, code, err) for command, code, err in results if code != 0]
        assert failed == [], f"{run} run: {failed}"

"""An admin token taken away by emptying or removing its file stops working at once.

Two admins, each with a token of their own: ``ops`` inline, ``contractor`` in a file.
An operator who ends the contractor's access by emptying (or deleting) that file,
as one takes a key out of a Secret, expects the contractor's next call refused.
Before, the reload that the file's change started was refused whole ("cannot read",
"the file is empty") and the gateway went on with the tokens it had, the
contractor's among them, for as long as the file stayed so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.management.client import KeyClient, ManagementError
from tests.integration.conftest import config_with_admin_token, running_stack, wait_for

OPS_TOKEN = "ops-admin-token-5b1d9e"
CONTRACTOR_TOKEN = "contractor-admin-token-8c2f4a"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("admin-revocation")
    (workdir / "contractor-token").write_text(CONTRACTOR_TOKEN + "\n")
    config = config_with_admin_token(workdir, OPS_TOKEN)
    contractor = f"    - id: contractor\n      token_file: {workdir / 'contractor-token'}\n"
    text = config.read_text().replace("\n  admin_tokens:\n", "\n  admin_tokens:\n" + contractor, 1)
    config.write_text(text)
    with running_stack(workdir, config) as running:
        yield running


def accepted(stack: LocalStack, token: str) -> bool:
    try:
        with KeyClient(f"127.0.0.1:{stack.ports.management}", token, timeout_s=5) as client:
            client.list()
    except ManagementError as refused:
        assert refused.code is grpc.StatusCode.UNAUTHENTICATED
        return False
    return True


@pytest.mark.parametrize("revoke", ["empty", "delete"])
def test_a_token_whose_file_is_emptied_or_removed_is_refused_and_the_others_work(
    stack: LocalStack, revoke: str
) -> None:
    token_file = stack.workdir / "contractor-token"
    token_file.write_text(CONTRACTOR_TOKEN + "\n")
    assert wait_for(lambda: accepted(stack, CONTRACTOR_TOKEN), 15, every_s=0.5)
    gateway = stack.process("gateway")

    if revoke == "empty":
        token_file.write_text("")
    else:
        token_file.unlink()

    assert wait_for(lambda: not accepted(stack, CONTRACTOR_TOKEN), 15, every_s=0.5)
    assert accepted(stack, OPS_TOKEN)
    # The gateway serves on, and says why the contractor's token no longer works,
    # naming the field and never a token.
    assert stack.process("gateway") is gateway and gateway.poll() is None
    chat = OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)
    answer = chat.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "still served?"}]
    )
    assert answer.choices[0].message.content
    err = (stack.workdir / "gateway.err").read_text(errors="replace")
    assert "management.admin_tokens[0] (contractor).token_file" in err
    assert "its caller is refused" in err
    assert CONTRACTOR_TOKEN not in err and OPS_TOKEN not in err


def test_a_token_file_that_gives_a_token_again_is_accepted_again(stack: LocalStack) -> None:
    token_file: Path = stack.workdir / "contractor-token"
    token_file.write_text("")
    assert wait_for(lambda: not accepted(stack, CONTRACTOR_TOKEN), 15, every_s=0.5)

    token_file.write_text("contractor-new-token-3e7a\n")

    assert wait_for(lambda: accepted(stack, "contractor-new-token-3e7a"), 15, every_s=0.5)
    assert not accepted(stack, CONTRACTOR_TOKEN)

"""A review of a Vertex AI provider's credentials in a running stack (real Envoy, the gateway,
the mock's Vertex AI and token endpoint): a rotated service account key reloads the config
and the next request carries a token minted with it; a broken key is refused while the
running config keeps serving; a token endpoint that takes a reload's token request and never
answers must not stop every later reload; each worker process mints its own token.

The stack and the mock share one key file (``LocalStack.gcp_credentials``): the mock trusts
whatever key it holds, so writing a new key there is a rotation both sides see.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from extproc.devstack import LocalStack
from extproc.mock_llm.vertex_auth import write_service_account
from tests.integration.conftest import (
    metric,
    mock_requests,
    running_stack,
    scrape,
    wait_for,
    write_config,
)
from tests.integration.mock_vertex import (
    FLASH,
    GEMINI_ON_VERTEX,
    LOCATION,
    stack_serving,
    tokens_issued,
    vertex_config,
)

CLIENT_KEY = "team1-key"
PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Say hello to the gateway, please."}
]
# The reloader polls every second; a reload mints a token in well under a second. A
# token request that never answers must give up well within this (10 s proposed).
RELOADED_S = 45.0


# How long a start or a reload tries for its first token (gcp.first_token_timeout_s):
# the reload that asks the silent endpoint below gives up after this, not the default 20 s.
FIRST_TOKEN_TIMEOUT_S = 3.0


def gemini_config() -> dict[str, Any]:
    """The default config with a Vertex AI provider (the mock's) and a Gemini model."""
    raw = vertex_config({"gemini-flash": GEMINI_ON_VERTEX}, {"gemini-flash": FLASH})
    [vertex] = [provider for provider in raw["providers"] if provider["name"] == "vertex"]
    vertex["gcp"]["first_token_timeout_s"] = FIRST_TOKEN_TIMEOUT_S
    return raw


stack = stack_serving(gemini_config, "vertex-credentials")


def reloads(stack: LocalStack, result: str) -> float:
    return metric(scrape(stack.metrics_url), "aigw_config_reloads_total", result=result)


def token_sent(stack: LocalStack) -> str:
    """One chat completion through the gateway to Gemini on Vertex: the token it carried."""
    client = openai.OpenAI(
        base_url=f"{stack.base_url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30.0
    )
    completion = client.chat.completions.create(model="gemini-flash", messages=PROMPT)
    assert completion.choices[0].message.content
    sent = [r for r in mock_requests(stack) if r["path"].startswith(LOCATION)][-1]
    authorization: str = sent["headers"]["authorization"]
    return authorization


def rotate(stack: LocalStack, token_uri: str | None = None) -> None:
    """A new key in the shared key file (its token URL the mock's, unless given)."""
    write_service_account(stack.gcp_credentials, token_uri=token_uri or f"{stack.mock_url}/token")


@contextmanager
def silent_token_endpoint() -> Iterator[tuple[str, list[socket.socket]]]:
    """A token URL whose server takes connections and never answers (a firewall or an
    egress proxy that holds them); the connections it took, for a test to wait on. Closed
    on exit: a request still waiting on it then fails."""
    server = socket.create_server(("127.0.0.1", 0))
    taken: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            taken.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/token", taken
    finally:
        server.close()
        for connection in taken:
            connection.close()
        thread.join(5.0)


def test_a_rotated_key_reloads_and_the_next_request_carries_its_token(stack: LocalStack) -> None:
    before = token_sent(stack)
    issued = tokens_issued(stack)
    succeeded = reloads(stack, "success")

    rotate(stack)

    assert wait_for(lambda: reloads(stack, "success") > succeeded, RELOADED_S)
    assert tokens_issued(stack) == issued + 1, "the new config minted one token"
    after = token_sent(stack)
    assert after.startswith("Bearer ya29.mock-") and after != before


def test_a_broken_key_is_refused_and_the_running_config_keeps_serving(stack: LocalStack) -> None:
    before = token_sent(stack)
    failed = reloads(stack, "failure")

    stack.gcp_credentials.write_text('{"type": "authorized_user"}', encoding="utf-8")
    try:
        assert wait_for(lambda: reloads(stack, "failure") > failed, RELOADED_S)
        assert token_sent(stack) == before, "the running config, and its token, serve on"
        err = (stack.workdir / "gateway.err").read_text(encoding="utf-8")
        assert "providers.vertex.gcp.credentials_file: not a service account key" in err
    finally:
        succeeded = reloads(stack, "success")
        rotate(stack)
        wait_for(lambda: reloads(stack, "success") > succeeded, RELOADED_S)


def test_a_token_endpoint_that_never_answers_does_not_stop_later_reloads(
    stack: LocalStack,
) -> None:
    # A rotated key whose token URL takes the reload's request and never answers, then
    # the right key: it must take effect (the reloader does one reload at a time).
    with silent_token_endpoint() as (token_uri, taken):
        rotate(stack, token_uri)
        assert wait_for(lambda: taken, 10.0), "the reload asked the silent endpoint"
        issued = tokens_issued(stack)
        rotate(stack)
        minted = wait_for(lambda: tokens_issued(stack) > issued, RELOADED_S)
    if not minted:
        # The endpoint closed: the waiting reload fails, the next one applies the key.
        issued = tokens_issued(stack)
        wait_for(lambda: tokens_issued(stack) > issued, RELOADED_S)
    assert minted, f"no reload applied the right key within {RELOADED_S:.0f} s"
    assert token_sent(stack).startswith("Bearer ya29.mock-")


def reloaded(stack: LocalStack) -> int:
    """How many reloads the gateway's processes logged as applied."""
    err = (stack.workdir / "gateway.err").read_text(encoding="utf-8", errors="replace")
    return err.count("extproc.config.reload: config reloaded from")


def test_each_worker_mints_its_own_token_and_reloads_a_rotated_key(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workdir: Path = tmp_path_factory.mktemp("vertex-workers")
    config = write_config(workdir, gemini_config())
    with running_stack(workdir, config, workers=2) as workers:
        # Each worker mints at its start; the file is what its supervisor validated, so
        # no worker reloads to catch up with it (nor mints again).
        assert wait_for(lambda: tokens_issued(workers) == 2, 10.0), "one per worker"
        issued = tokens_issued(workers)
        assert reloaded(workers) == 0
        assert token_sent(workers).startswith("Bearer ya29.mock-")

        rotate(workers)

        assert wait_for(lambda: reloaded(workers) == 2, RELOADED_S), "each worker reloads"
        assert tokens_issued(workers) == issued + 2, "each worker mints with the new key"
        assert token_sent(workers).startswith("Bearer ya29.mock-")

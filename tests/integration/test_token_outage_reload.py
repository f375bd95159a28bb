"""A config reload while Google's token endpoint is out of reach, through the real Envoy
with the official openai client: the reload is applied (a key it revokes is refused at
once), and Vertex requests go on with the access token the replaced config minted.

Google's token endpoint is the mock's, reached through a small forwarder of this test's
that can go down while the mock's Vertex AI stays up."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any, ClassVar

import httpx
import openai
import pytest
import yaml

from extproc.devstack import LocalStack
from tests.integration.conftest import running_stack, wait_for, write_config
from tests.integration.mock_vertex import GEMINI_ON_VERTEX, vertex_config, vertex_requests

KEPT_KEY, REVOKED_KEY = "team1-key", "team2-key"
PROMPT = [{"role": "user", "content": "hello across a reload"}]


class TokenForwarder(BaseHTTPRequestHandler):
    """Google's token endpoint as the gateway reaches it: the mock's, forwarded."""

    target: ClassVar[str] = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        answer = httpx.post(
            self.target,
            content=body,
            headers={"content-type": self.headers.get("content-type", "")},
            timeout=10.0,
        )
        self.send_response(answer.status_code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def forwarder() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenForwarder)
    Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def config() -> dict[str, Any]:
    return vertex_config({"gemini-flash": GEMINI_ON_VERTEX})


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, forwarder: ThreadingHTTPServer
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("token-outage")
    with running_stack(workdir, write_config(workdir, config())) as running:
        TokenForwarder.target = f"{running.mock_url}/token"
        # The key the gateway reads now names the forwarder as its token endpoint; the
        # gateway watches the file, reloads and mints its token through the forwarder.
        before = reloads(running)
        key = json.loads(running.gcp_credentials.read_text())
        key["token_uri"] = f"http://127.0.0.1:{forwarder.server_address[1]}/token"
        written = running.gcp_credentials.with_suffix(".new")
        written.write_text(json.dumps(key))
        written.replace(running.gcp_credentials)
        assert wait_for(lambda: reloads(running) > before, timeout_s=30.0)
        yield running


def reloads(stack: LocalStack) -> int:
    return (stack.workdir / "gateway.err").read_text().count("config reloaded")


def client(stack: LocalStack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0, timeout=30)


def ask(stack: LocalStack, key: str) -> str:
    reply = client(stack, key).chat.completions.create(
        model="gemini-flash",
        messages=PROMPT,  # type: ignore[arg-type]
    )
    return reply.choices[0].message.content or ""


def test_a_reload_during_a_token_outage_revokes_the_key_and_vertex_still_answers(
    stack: LocalStack, forwarder: ThreadingHTTPServer
) -> None:
    assert ask(stack, REVOKED_KEY), "served before the reload"
    token = vertex_requests(stack)[-1]["headers"]["authorization"]

    forwarder.shutdown()  # Google's token endpoint goes out of reach...
    forwarder.server_close()
    raw = config()
    raw["auth"]["api_keys"] = [k for k in raw["auth"]["api_keys"] if k["id"] != "team2"]
    (stack.workdir / "gateway.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    before = reloads(stack)
    stack.process("gateway").send_signal(signal.SIGHUP)  # ...and the org revokes a key

    # Before, the reload tried for 20 s and was refused: the revoked key kept working.
    assert wait_for(lambda: reloads(stack) > before, timeout_s=40.0), "the reload was refused"
    with pytest.raises(openai.AuthenticationError):
        ask(stack, REVOKED_KEY)
    assert ask(stack, KEPT_KEY)
    assert vertex_requests(stack)[-1]["headers"]["authorization"] == token
    assert token.split()[1] not in (stack.workdir / "gateway.err").read_text()

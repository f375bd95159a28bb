"""A stream guarded by a response webhook outlives a config reload.

The real Envoy, the gateway and the mock provider, driven by the official OpenAI
client; the webhook is a small server written here (kgateway's guardrail API).
A client streams an answer on a route whose answers a webhook checks, chunk by
chunk, with ``fail_closed``. One webhook call is held open; the operator reloads
the config meanwhile, and the call is answered only after the reload (past the
grace period, none here). A replaced config whose HTTP session closed at the
reload would cut that call, and the stream would end in an error; it must end
with the whole answer, its chunks after the held call still checked: the
replaced config's clients stay open until the last stream that started on it has
ended (docs/configuration.md, "Reload").
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    JsonStandIn,
    default_config,
    running_stack,
    serving,
    wait_for,
    write_config,
)

KEY = "team1-key"
# The longest a held webhook call waits to be released (the test releases it sooner).
HOLD_MAX_S = 30.0
# After the reload, before the held call answers: time for the replaced config's
# clients to be closed, were they closed at the reload.
AFTER_RELOAD_S = 1.0
# Long enough to stream past the held call: 40 chunks, a tenth of a second apart.
STREAM = "chunks=40;interval=0.1"


class Webhook(JsonStandIn):
    """Passes every answer; once ``hold`` is set, the next call waits for ``release``."""

    hold = threading.Event()
    held = threading.Event()
    release = threading.Event()
    calls_after_hold = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.json_body()  # every answer passes, whatever it says
        cls = type(self)
        if cls.held.is_set():
            cls.calls_after_hold += 1
        elif cls.hold.is_set():
            cls.held.set()
            cls.release.wait(HOLD_MAX_S)
        self.answer_json({"action": {}})


@pytest.fixture(scope="module")
def webhook() -> Iterator[int]:
    with serving(Webhook) as port:
        yield port


def checked_config(webhook_port: int, revision: int) -> dict[str, Any]:
    raw = default_config()
    raw["server"]["grace_period_s"] = 0
    # The held webhook call keeps its chunk's ext_proc message waiting that long.
    raw["envoy"]["message_timeout_ms"] = int((HOLD_MAX_S + 10) * 1000)
    raw["guardrails"] = {
        "webhooks": [{"name": "checker", "host": "127.0.0.1", "port": webhook_port,
                      "timeout_ms": int((HOLD_MAX_S + 5) * 1000), "failure_mode": "fail_closed"}],
        "policies": [{"name": "checked",
                      "response": [{"name": "checker-out", "webhook": "checker"}]}],
    }  # fmt: skip
    raw["routes"].append({"name": "checked", "path_prefix": "/checked", "guardrails": "checked"})
    # What the operator's edit changes does not matter here, only that it is a reload.
    raw["auth"]["api_keys"].append({"id": f"edit-{revision}", "key": f"edit-{revision}-secret"})
    return raw


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, webhook: int) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("reload-config-lifetime")
    with running_stack(workdir, write_config(workdir, checked_config(webhook, 0))) as running:
        yield running


def reload(stack: LocalStack, webhook_port: int, revision: int) -> None:
    """Rewrite the file in one step, send SIGHUP, wait until the gateway reloaded."""

    def reloads() -> int:
        return (stack.workdir / "gateway.err").read_text().count("config reloaded")

    before = reloads()
    written = stack.config_path.with_suffix(".new")
    written.write_text(yaml.safe_dump(checked_config(webhook_port, revision), sort_keys=False))
    written.replace(stack.config_path)
    stack.process("gateway").send_signal(signal.SIGHUP)
    assert wait_for(lambda: reloads() > before, timeout_s=30.0), "the gateway did not reload"


def test_a_guarded_stream_keeps_its_webhook_across_a_reload(
    stack: LocalStack, webhook: int
) -> None:
    chat = OpenAI(base_url=f"{stack.base_url}/checked/v1", api_key=KEY, max_retries=0)
    with chat.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "an answer across a reload"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-fault": STREAM},
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = iter(response.parse())
        text = "".join(c.delta.content or "" for c in next(chunks).choices)
        Webhook.hold.set()
        assert wait_for(Webhook.held.is_set, timeout_s=30.0), "no webhook call to hold"
        reload(stack, webhook, 1)
        time.sleep(AFTER_RELOAD_S)
        Webhook.release.set()
        usage = None
        # The SDK raises on an error event: a cut webhook call (fail_closed) would end here.
        for chunk in chunks:
            text += "".join(c.delta.content or "" for c in chunk.choices)
            usage = chunk.usage or usage

    assert Webhook.calls_after_hold > 0, "the guard stopped asking the webhook"
    assert text.startswith("Mock reply to: an answer across a reload")
    assert usage is not None, "the stream ended without its usage chunk"
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert (line["http_status_code"], line["completion_tokens"]) == (200, usage.completion_tokens)

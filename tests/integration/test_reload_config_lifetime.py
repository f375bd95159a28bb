"""A stream guarded by a response webhook outlives a config reload by a long way.

The real Envoy, the gateway and the mock provider, driven by the official OpenAI
client; the webhook is a small server written here (kgateway's guardrail API).
A client streams a long answer on a route whose answers a webhook checks, chunk
by chunk, with ``fail_closed``. The operator reloads the config early in the
stream. After the reload, past the grace period (none here), the webhook takes
its time over one call, and is asked again for the chunks after it. The stream
must still end with the whole answer: the replaced config's clients stay open
until the last stream that started on it has ended, not for a while after the
reload (docs/configuration.md, "Reload"). No timer closes them before that but
the one-hour safety net, so the moment of the slow call only has to come after
the reload and the grace period.
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
# With no grace period, a call in flight from HOLD_FROM_S to HOLD_FROM_S + HOLD_S
# after the reload comes when clients closed "soon after the reload" would be gone.
HOLD_FROM_S = 2.0
HOLD_S = 3.0
# Long enough to stream past the held call: 60 chunks, a fifth of a second apart.
LONG_STREAM = "chunks=60;interval=0.2"


class Webhook(JsonStandIn):
    """Passes every answer; the first call from ``hold_from`` on is answered slowly."""

    hold_from: float | None = None
    held = threading.Event()
    calls_after_hold = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.json_body()  # every answer passes, whatever it says
        cls = type(self)
        if cls.held.is_set():
            cls.calls_after_hold += 1
        elif cls.hold_from is not None and time.monotonic() >= cls.hold_from:
            cls.held.set()
            time.sleep(HOLD_S)
        self.answer_json({"action": {}})


@pytest.fixture(scope="module")
def webhook() -> Iterator[int]:
    with serving(Webhook) as port:
        yield port


def checked_config(webhook_port: int, revision: int) -> dict[str, Any]:
    raw = default_config()
    raw["server"]["grace_period_s"] = 0
    # The held webhook call keeps its chunk's ext_proc message waiting that long.
    raw["envoy"]["message_timeout_ms"] = int((HOLD_S + 10) * 1000)
    raw["guardrails"] = {
        "webhooks": [{"name": "checker", "host": "127.0.0.1", "port": webhook_port,
                      "timeout_ms": int((HOLD_S + 5) * 1000), "failure_mode": "fail_closed"}],
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


def test_a_guarded_stream_keeps_its_webhook_long_after_a_reload(
    stack: LocalStack, webhook: int
) -> None:
    chat = OpenAI(base_url=f"{stack.base_url}/checked/v1", api_key=KEY, max_retries=0)
    with chat.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a long answer across a reload"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-fault": LONG_STREAM},
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = iter(response.parse())
        text = "".join(c.delta.content or "" for c in next(chunks).choices)
        reload(stack, webhook, 1)
        Webhook.hold_from = time.monotonic() + HOLD_FROM_S
        usage = None
        # The SDK raises on an error event: a cut webhook call (fail_closed) would end here.
        for chunk in chunks:
            text += "".join(c.delta.content or "" for c in chunk.choices)
            usage = chunk.usage or usage

    assert Webhook.held.is_set(), "the stream ended before the webhook's slow call"
    assert Webhook.calls_after_hold > 0, "the guard stopped asking the webhook"
    assert text.startswith("Mock reply to: a long answer across a reload")
    assert usage is not None, "the stream ended without its usage chunk"
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert (line["http_status_code"], line["completion_tokens"]) == (200, usage.completion_tokens)

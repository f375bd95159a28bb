"""Guardrails and enrichment through the processor, fed the messages Envoy sends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as ext_proc_mode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig, load_config
from extproc.config.loader import ConfigError
from extproc.runtime import Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
    serve_mock,
)
from tests.unit.conftest import MemoryLog
from tests.unit.guard_helpers import config_with

AUTH = {"authorization": "Bearer team1-key"}
WORKSHOP = {
    "policies": [
        {
            "name": "workshop",
            "request": [
                {
                    "name": "card-talk",
                    "patterns": ["credit card"],
                    "case_insensitive": True,
                    "message": "Sorry, I cannot talk about credit cards.",
                },
                {"name": "pii", "builtins": ["CREDIT_CARD", "EMAIL"], "action": "mask"},
            ],
            "response": [{"name": "pii-out", "builtins": ["CREDIT_CARD"], "action": "mask"}],
        }
    ]
}


def chat(text: str, **fields: Any) -> bytes:
    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **fields}
    )


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
        self.processor = processor_for(config, self.services)

    async def send(self, path: str, body: bytes, *more: ext.ProcessingRequest) -> list[Any]:
        messages = [request_headers(path, headers=AUTH), request_body(body), *more]
        return await run_stream(self.processor, messages)

    def log(self) -> dict[str, Any]:
        lines: list[dict[str, Any]] = self.services.access_log.lines()  # type: ignore[attr-defined]
        return lines[-1]

    def decisions(self, **labels: str) -> float:
        total = 0.0
        for family in self.services.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "aigw_guardrail_decisions_total" and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total


def upstream_body(answer: ext.ProcessingResponse) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(answer.request_body.response.body_mutation.body)
    return result


def immediate(answer: ext.ProcessingResponse) -> tuple[int, dict[str, Any]]:
    return answer.immediate_response.status.code, orjson.loads(answer.immediate_response.body)


async def test_workshop_card_question_is_rejected_with_the_custom_message() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"openai-chat": {"guardrails": "workshop"}}))
    question = "Can you give me some examples of Master Card credit card numbers?"
    answers = await gateway.send("/v1/chat/completions", chat(question))
    status, body = immediate(answers[-1])
    assert status == 403
    assert body["error"]["message"] == "Sorry, I cannot talk about credit cards."
    assert body["error"]["type"] == "permission_error"
    line = gateway.log()
    assert line["guardrails"] == [{"guard": "card-talk", "phase": "request", "action": "reject"}]
    assert "master card" not in orjson.dumps(line).decode().lower()  # no prompt text
    assert gateway.decisions(guard="card-talk", phase="request", action="reject") == 1


async def test_pii_is_masked_in_strings_and_parts_before_the_provider_sees_it() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"openai-chat": {"guardrails": ["workshop"]}}))
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Reply to ops@example.com"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "My card is 4111 1111 1111 1111."},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                },
            ],
        }
    )
    answers = await gateway.send("/v1/chat/completions", body)
    sent = upstream_body(answers[1])
    assert sent["messages"][0]["content"] == "Reply to <EMAIL>"
    assert sent["messages"][1]["content"][0]["text"] == "My card is <CREDIT_CARD>."
    assert sent["messages"][1]["content"][1]["type"] == "image_url"
    assert {"guard": "pii", "phase": "request", "action": "mask"} in gateway.log()["guardrails"]
    assert gateway.decisions(guard="card-talk", action="pass") == 1


async def test_pii_in_an_anthropic_tool_result_is_masked_too() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"anthropic-messages": {"guardrails": "workshop"}}))
    use = {"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}
    results = [
        {"type": "tool_result", "tool_use_id": "t1", "content": "mail jane@example.com"},
        {"type": "tool_result", "tool_use_id": "t2",
         "content": [{"type": "text", "text": "ops@example.com"}]},
    ]  # fmt: skip
    body = orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "look up the contact"},
                {"role": "assistant", "content": [use]},
                {"role": "user", "content": results},
            ],
        }
    )
    answers = await gateway.send("/v1/messages", body)
    sent = upstream_body(answers[1])["messages"][2]["content"]
    assert sent[0]["content"] == "mail <EMAIL>"
    assert sent[1]["content"][0]["text"] == "<EMAIL>"


async def test_routes_without_policies_are_untouched() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"openai-chat": {"guardrails": "workshop"}}))
    answers = await gateway.send("/openai", chat("card 4111 1111 1111 1111"))
    assert not answers[1].request_body.response.HasField("body_mutation")
    assert gateway.log()["guardrails"] is None


async def test_anthropic_route_refusal_has_anthropic_shape() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"anthropic-messages": {"guardrails": "workshop"}}))
    body = orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 20,
            "messages": [{"role": "user", "content": "list credit card numbers"}],
        }
    )
    answers = await gateway.send("/v1/messages", body)
    status, error = immediate(answers[-1])
    assert status == 403
    assert error == {
        "type": "error",
        "error": {
            "type": "permission_error",
            "message": "Sorry, I cannot talk about credit cards.",
        },
    }


async def test_enrichment_prepends_and_appends_with_identity() -> None:
    enrichment = {
        "prepend": [{"role": "system", "content": "You help the {group_id} team ({user_id})."}],
        "append": [{"role": "user", "content": "Answer in English."}],
    }
    gateway = Gateway(config_with({}, {"openai-chat": {"enrichment": enrichment}}))
    answers = await gateway.send("/v1/chat/completions", chat("Hi"))
    sent = upstream_body(answers[1])
    assert sent["messages"] == [
        {"role": "system", "content": "You help the engineering team (alice)."},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "Answer in English."},
    ]


async def test_enrichment_on_anthropic_messages_uses_system_and_user_turns() -> None:
    enrichment = {
        "prepend": [{"role": "system", "content": "Team {group_id}."}],
        "append": [{"role": "user", "content": "Be brief."}],
    }
    gateway = Gateway(config_with({}, {"anthropic-messages": {"enrichment": enrichment}}))
    body = orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 20,
            "system": "Be kind.",
            "messages": [{"role": "user", "content": "Hi"}],
        }
    )
    sent = upstream_body((await gateway.send("/v1/messages", body))[1])
    assert sent["system"] == [
        {"type": "text", "text": "Team engineering."},
        {"type": "text", "text": "Be kind."},
    ]
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Be brief."}],
        }
    ]


async def test_buffered_answer_is_masked() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"openai-chat": {"guardrails": "workshop"}}))
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Try 5105105105105100"}}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    answers = await gateway.send(
        "/v1/chat/completions",
        chat("Give me a test card"),
        response_headers(200, {"content-length": "200"}),
        response_body(orjson.dumps(answer)),
    )
    assert "content-length" in answers[2].response_headers.response.header_mutation.remove_headers
    shown = orjson.loads(answers[3].response_body.response.body_mutation.body)
    assert shown["choices"][0]["message"]["content"] == "Try <CREDIT_CARD>"
    line = gateway.log()
    assert {"guard": "pii-out", "phase": "response", "action": "mask"} in line["guardrails"]
    assert line["prompt_tokens"] == 5


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="unknown policy 'nope'"):
        config_with({}, {"openai-chat": {"guardrails": "nope"}})
    with pytest.raises(ConfigError, match="unknown webhook 'hook'"):
        config_with(
            {"policies": [{"name": "p", "request": [{"name": "w", "webhook": "hook"}]}]}, {}
        )
    with pytest.raises(ConfigError, match="credential"):
        config_with(
            {"webhooks": [{"name": "w", "host": "x", "forward_headers": ["authorization"]}]}, {}
        )
    with pytest.raises(ConfigError, match="unknown placeholder"):
        enrichment = {"prepend": [{"content": "{password}"}]}
        config_with({}, {"openai-chat": {"enrichment": enrichment}})
    with pytest.raises(ConfigError, match="exactly one kind"):
        config_with({"policies": [{"name": "p", "request": [{"name": "empty"}]}]}, {})


# --- webhooks and moderation ---------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def webhook_server(handler: Handler) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_post("/request", handler)
    app.router.add_post("/response", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def webhook_config(port: int, **webhook: Any) -> GatewayConfig:
    guardrails = {
        "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port, **webhook}],
        "policies": [
            {"name": "hooked", "request": [{"name": "hook-guard", "webhook": "hook"}]},
        ],
    }
    return config_with(guardrails, {"openai-chat": {"guardrails": "hooked"}})


@pytest.mark.parametrize(
    ("mode", "status", "action"),
    [("fail_open", None, "fail_open"), ("fail_closed", 503, "fail_closed")],
)
async def test_slow_webhook_fails_as_configured(mode: str, status: int | None, action: str) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({"action": {}})

    async with webhook_server(slow) as port:
        gateway = Gateway(webhook_config(port, timeout_ms=200, failure_mode=mode))
        answers = await asyncio.wait_for(gateway.send("/v1/chat/completions", chat("hi")), 4)
    if status is None:
        assert answers[1].HasField("request_body")
    else:
        assert immediate(answers[-1])[0] == status
    assert gateway.log()["guardrails"] == [
        {"guard": "hook-guard", "phase": "request", "action": action}
    ]


async def test_webhook_down_fails_closed_by_default() -> None:
    async with webhook_server(lambda r: asyncio.sleep(0)) as port:  # type: ignore[arg-type,return-value]
        pass  # the port is closed again: nothing listens there
    gateway = Gateway(webhook_config(port))
    status, body = immediate((await gateway.send("/v1/chat/completions", chat("hi")))[-1])
    assert status == 503
    assert body["error"]["code"] == "guardrail_unavailable"


async def test_webhook_sees_forwarded_headers_but_never_the_client_key() -> None:
    seen: dict[str, str] = {}

    async def record(request: web.Request) -> web.Response:
        seen.update(request.headers)
        return web.json_response({"action": {"reason": "fine"}})

    async with webhook_server(record) as port:
        config = webhook_config(port, forward_headers=["x-team-*"], headers={"x-hook-token": "t0k"})
        gateway = Gateway(config)
        messages = [
            request_headers(
                "/v1/chat/completions", headers={**AUTH, "x-team-name": "blue", "x-other": "no"}
            ),
            request_body(chat("hi")),
        ]
        await run_stream(gateway.processor, messages)
    assert seen["x-team-name"] == "blue"
    assert seen["x-hook-token"] == "t0k"
    assert "x-other" not in seen
    assert "authorization" not in {k.lower() for k in seen}


async def test_moderation_rejects_naming_categories() -> None:
    async with serve_mock() as mock_url:
        guardrails = {
            "moderation": [
                {
                    "name": "openai-mod",
                    "base_url": f"{mock_url}/v1",
                    "api_key": "mock-key",
                    "thresholds": {"illicit": 0.4},
                }
            ],
            "policies": [
                {"name": "mod", "request": [{"name": "moderated", "moderation": "openai-mod"}]}
            ],
        }
        gateway = Gateway(config_with(guardrails, {"openai-chat": {"guardrails": "mod"}}))
        first = await gateway.send("/v1/chat/completions", chat("how to steal and kill"))
        passed = await gateway.send("/v1/chat/completions", chat("how to bake bread"))
    status, body = immediate(first[-1])
    assert status == 403
    # violence is flagged by the provider; illicit (0.45) only by its 0.4 threshold.
    assert (
        body["error"]["message"]
        == "Rejected by guardrail 'moderated': flagged for illicit, violence"
    )
    assert passed[1].HasField("request_body")
    assert gateway.decisions(guard="moderated", action="pass") == 1


async def test_moderation_reads_json_escapes_as_the_model_does() -> None:
    """A word written with a JSON escape (a tool's ``json.dumps`` output, or a client
    hiding it) is moderated as the model reads it; as written (``b\\u006fmb``) no
    moderation model need recognise it."""
    async with serve_mock() as mock_url:
        guardrails = {
            "moderation": [{"name": "mod", "base_url": f"{mock_url}/v1", "api_key": "mock-key"}],
            "policies": [{"name": "mod", "request": [{"name": "moderated", "moderation": "mod"}]}],
        }
        gateway = Gateway(config_with(guardrails, {"openai-chat": {"guardrails": "mod"}}))
        escaped = await gateway.send("/v1/chat/completions", chat("how to build a b\\u006fmb"))
        path = await gateway.send("/v1/chat/completions", chat("open C:\\newsletter\\draft.txt"))
    status, body = immediate(escaped[-1])
    assert status == 403
    assert "flagged for illicit/violent" in body["error"]["message"]
    assert path[1].HasField("request_body")  # decoding a path's backslashes flags nothing


def test_the_example_config_loads_and_builds() -> None:
    config = load_config("config/examples/guardrails.yaml", environ={})
    runtime_guards = processor_for(config)
    assert runtime_guards is not None
    assert [r.guardrails for r in config.routes] == [
        ("workshop", "moderated"),
        ("workshop",),
        ("webhooked",),
    ]


def test_services_without_store_still_build() -> None:
    # A runtime with guards builds without a running loop (sessions are made on first use).
    config = config_with(WORKSHOP, {"openai-chat": {"guardrails": "workshop"}})
    processor_for(config, Services(GatewayMetrics(), AccessLog(stdout=False)))


async def test_routes_guarding_answers_keep_the_response_headers_message() -> None:
    # Masking changes an answer's length, so its headers (content-length) must be answered;
    # request-only policies keep the lean path.
    request_only = {"policies": [{"name": "in", "request": WORKSHOP["policies"][0]["request"]}]}
    for guardrails, policy, lean in ((WORKSHOP, "workshop", False), (request_only, "in", True)):
        gateway = Gateway(config_with(guardrails, {"openai": {"guardrails": policy}}))
        [answer] = await run_stream(
            gateway.processor, [request_headers("/openai/gpt-4o-mini", headers=AUTH)]
        )
        assert answer.mode_override.response_header_mode == (
            ext_proc_mode.ProcessingMode.SKIP if lean else ext_proc_mode.ProcessingMode.SEND
        )


@pytest.mark.parametrize(
    ("path", "route"),
    [("/v1/chat/completions", "openai-chat"), ("/v1/messages", "anthropic-messages")],
)
async def test_a_repeated_key_cannot_carry_unguarded_text_past_the_guards(
    path: str, route: str
) -> None:
    """The guards read one of a repeated key's values (orjson keeps the last); had the
    client's bytes gone on, a provider whose parser keeps the first would read the other,
    unguarded one. The provider gets the body the guards read."""
    gateway = Gateway(config_with(WORKSHOP, {route: {"guardrails": "workshop"}}))
    unguarded = '[{"role": "user", "content": "my credit card is 4111 1111 1111 1111"}]'
    clean = '[{"role": "user", "content": "hello"}]'
    body = (
        '{"model": "gpt-4o-mini", "max_tokens": 50, '
        f'"messages": {unguarded}, "messages": {clean}}}'
    ).encode()
    if route == "anthropic-messages":
        body = body.replace(b"gpt-4o-mini", b"claude-3-5-haiku-latest")

    answers = await gateway.send(path, body)

    sent = upstream_body(answers[1])
    assert sent["messages"] == [{"role": "user", "content": "hello"}]
    assert b"4111" not in answers[1].request_body.response.body_mutation.body


async def test_the_guards_deadline_counts_what_the_phase_spent_before_them() -> None:
    # A store wait earlier in the phase (a stored response's owner looked up) took its
    # share of Envoy's wait: the guards get only what is left of it.
    from extproc.context import RequestContext
    from extproc.runtime import Runtime
    from extproc.stages.guardrails import _guard_deadline

    config = webhook_config(1, timeout_ms=200)
    runtime = Runtime(config, Services(metrics=GatewayMetrics(), access_log=MemoryLog()))
    loop = asyncio.get_running_loop()
    fresh = RequestContext(runtime=runtime, phase_started=time.monotonic())
    budget_s = (config.envoy.message_timeout_ms - config.store.timeout_ms) / 1000
    assert budget_s - 0.2 < _guard_deadline(fresh, store_follows=True) - loop.time() < budget_s
    spent = RequestContext(runtime=runtime, phase_started=time.monotonic() - budget_s)
    assert _guard_deadline(spent, store_follows=True) <= loop.time()

"""Claude models that bind thinking to its history, behind guards that may change it.

Claude Fable 5.1 and the models after it refuse (400) a request whose thinking sent back
follows anything that differs from what Claude saw when it wrote it. A response guard's
mask does exactly that to the next turn's history, and the client cannot repair it. On a
route whose guards may change history, the gateway asks Claude to drop such thinking
instead (``thinking.block_binding.prefix_mismatch_behavior: "drop_block"`` and the
``thinking-binding-controls-2026-08-01`` beta flag), never for a model that does not bind,
on a route that cannot change history, or over the client's own choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import yaml
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig
from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.runtime import Runtime
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.test_guard_flow import AUTH, Gateway, upstream_body, webhook_server

BETA = "thinking-binding-controls-2026-08-01"
DROP = {"prefix_mismatch_behavior": "drop_block"}
FABLE = "claude-fable-5-1"
MASK_EMAIL = {"name": "pii", "builtins": ["EMAIL"], "action": "mask"}
REJECT_EMAIL = {"name": "no-pii", "builtins": ["EMAIL"], "action": "reject"}
SIGNED = {"type": "thinking", "thinking": "Look it up first.", "signature": "c2ln"}
USE = {"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}


def config(
    guards: dict[str, list[dict[str, Any]]] | None = None,
    *,
    enrichment: dict[str, Any] | None = None,
    guardrails: dict[str, Any] | None = None,
    guarded: bool = True,
) -> GatewayConfig:
    """The default config with one policy (``guards`` by phase) on the Anthropic and
    Bedrock routes."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["guardrails"] = guardrails or {"policies": [{"name": "p", **(guards or {})}]}
    for route in raw["routes"]:
        if guarded and route["name"] in ("anthropic-messages", "bedrock-converse"):
            route["guardrails"] = "p"
            if enrichment is not None:
                route["enrichment"] = enrichment
    return parse_config(yaml.safe_dump(raw), "test", {})


def history(model: str = FABLE, **fields: Any) -> dict[str, Any]:
    """A conversation whose earlier answer thought, wrote text, then thought again (the
    text a response guard masked before the client sent it back)."""
    answer = [
        {"type": "thinking", "thinking": "An address.", "signature": "c2ln"},
        {"type": "text", "text": "Write to <EMAIL_ADDRESS>."},
        SIGNED,
        USE,
    ]
    return {
        "model": model,
        "max_tokens": 64,
        "messages": [
            {"role": "user", "content": "Whom do I write to?"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        ],
        **fields,
    }


async def sent(
    gw: Gateway, body: dict[str, Any], path: str = "/v1/messages", **headers: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The body the provider gets, and the headers the gateway sets on its way."""
    answers = await run_stream(
        gw.processor,
        [request_headers(path, headers={**AUTH, **headers}), request_body(orjson.dumps(body))],
    )
    answer: ext.ProcessingResponse = answers[1]
    assert not answer.HasField("immediate_response"), answer.immediate_response.body
    mutation = answer.request_body.response.header_mutation
    set_headers = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    changed = answer.request_body.response.body_mutation.body
    return (upstream_body(answer) if changed else body), set_headers


async def test_a_masking_response_guard_asks_fable_to_drop_thinking_it_cannot_use() -> None:
    gw = Gateway(config({"response": [MASK_EMAIL]}))
    body, headers = await sent(gw, history(), **{"anthropic-beta": "files-api-2025-04-14"})
    # Claude drops the block the masked text invalidated and answers, instead of a 400
    # the client cannot get past.
    assert body["thinking"] == {"type": "adaptive", "block_binding": DROP}
    assert headers["anthropic-beta"] == f"files-api-2025-04-14,{BETA}"
    assert body["messages"][1]["content"][2] == SIGNED  # the thinking itself is untouched


async def test_the_clients_thinking_settings_are_kept_beside_the_setting() -> None:
    gw = Gateway(config({"request": [MASK_EMAIL]}))
    thinking = {"type": "adaptive", "display": "summarized"}
    body, headers = await sent(gw, history(thinking=thinking))
    assert body["thinking"] == {**thinking, "block_binding": DROP}
    assert headers["anthropic-beta"] == BETA


async def test_the_beta_flag_the_client_already_sends_is_not_repeated() -> None:
    gw = Gateway(config({"response": [MASK_EMAIL]}))
    body, headers = await sent(gw, history(), **{"anthropic-beta": f"{BETA}, other-2026-01-01"})
    assert body["thinking"]["block_binding"] == DROP
    assert "anthropic-beta" not in headers  # the client's header goes on as it is


async def test_a_model_that_does_not_bind_its_thinking_is_never_sent_the_setting() -> None:
    gw = Gateway(config({"response": [MASK_EMAIL]}))
    for model in ("claude-opus-5", "claude-sonnet-4-0"):
        body, headers = await sent(gw, history(model))
        assert "thinking" not in body, model
        assert "anthropic-beta" not in headers, model


async def test_a_route_whose_guards_only_refuse_leaves_the_request_alone() -> None:
    gw = Gateway(config({"request": [REJECT_EMAIL], "response": [REJECT_EMAIL]}))
    body, headers = await sent(gw, history())
    assert "thinking" not in body
    assert "anthropic-beta" not in headers


async def test_an_unguarded_route_leaves_the_request_alone() -> None:
    body, headers = await sent(
        Gateway(config({"response": [MASK_EMAIL]}, guarded=False)), history()
    )
    assert "thinking" not in body
    assert "anthropic-beta" not in headers


async def test_the_clients_own_choice_is_kept() -> None:
    gw = Gateway(config({"response": [MASK_EMAIL]}))
    thinking = {"type": "adaptive", "block_binding": {"prefix_mismatch_behavior": "error"}}
    body, headers = await sent(gw, history(thinking=thinking))
    assert body["thinking"] == thinking
    assert "anthropic-beta" not in headers


async def test_thinking_turned_off_is_not_turned_on() -> None:
    gw = Gateway(config({"response": [MASK_EMAIL]}))
    body, _ = await sent(gw, history(thinking={"type": "disabled"}))
    assert body["thinking"] == {"type": "disabled"}


async def test_a_request_that_sends_no_thinking_back_is_left_alone() -> None:
    gw = Gateway(config({"response": [MASK_EMAIL]}))
    request = history()
    request["messages"][1]["content"] = [{"type": "text", "text": "Hi."}]
    body, headers = await sent(gw, request)
    assert "thinking" not in body
    assert "anthropic-beta" not in headers


async def test_an_enrichment_appended_to_the_users_turn_asks_for_the_setting_too() -> None:
    # The appended text is in the prefix of the answer's thinking, and gone from that turn
    # when the client sends it back.
    appended = {"append": [{"role": "user", "content": "Answer briefly."}]}
    body, headers = await sent(Gateway(config(enrichment=appended)), history())
    assert body["thinking"]["block_binding"] == DROP
    assert headers["anthropic-beta"] == BETA
    # A system prompt the route prepends is the same at every turn: nothing changes.
    prepended = {"prepend": [{"role": "system", "content": "Be kind."}]}
    body, headers = await sent(Gateway(config(enrichment=prepended)), history())
    assert "thinking" not in body
    assert "anthropic-beta" not in headers


async def test_a_request_webhook_asks_for_the_setting() -> None:
    async def check(request: web.Request) -> web.Response:
        return web.json_response({"action": {"reason": "fine"}})

    async with webhook_server(check) as port:
        guardrails = {
            "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port}],
            "policies": [{"name": "p", "request": [{"name": "in", "webhook": "hook"}]}],
        }
        body, headers = await sent(Gateway(config(guardrails=guardrails)), history())
    assert body["thinking"]["block_binding"] == DROP
    assert headers["anthropic-beta"] == BETA


async def test_bedrock_invoke_model_gets_the_flag_in_its_body_beside_the_clients() -> None:
    gateway_config = config({"response": [MASK_EMAIL]})
    gw = Gateway(gateway_config)
    runtime = Runtime(gateway_config, gw.services)
    await runtime.start()  # SigV4 credentials are loaded there
    gw.processor = Processor(lambda: runtime, default_stages())
    model = "anthropic.claude-fable-5-1-v1:0"
    request = history(anthropic_version="bedrock-2023-05-31", anthropic_beta=["other-2026"])
    del request["model"]
    try:
        body, _ = await sent(gw, request, f"/model/{quote(model, safe='')}/invoke")
    finally:
        await runtime.close()
    assert body["thinking"] == {"type": "adaptive", "block_binding": DROP}
    assert body["anthropic_beta"] == ["other-2026", BETA]

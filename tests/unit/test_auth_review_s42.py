"""Review s42: authentication and access, as an operator writing rules and keys.

Each test loads a config as `extproc check-config` and `serve` do, or drives the real
processor with ext_proc messages, and checks what the operator or the client sees.
"""

from __future__ import annotations

import orjson
import pytest
from aiohttp import web

from extproc.config import GatewayConfig, parse_config
from extproc.config.loader import ConfigError
from extproc.devstack import DEFAULT_CONFIG
from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_flow import webhook_server
from tests.unit.test_review_s36_auth import (
    chat,
    config,
    let_through,
    refusal,
    removed_upstream,
    send,
)

# gpt-4o on the chat route for engineering alone; team2 (bob) is in marketing.
RULE_ON = (
    "  access_rules:\n"
    "    - {{name: gpt-4o-chat, models: [gpt-4o], routes: [{route}], groups: [engineering]}}\n"
)
TEAM2 = {"authorization": "Bearer team2-key"}


async def test_a_rule_kept_to_the_chat_route_refuses_marketing_there() -> None:
    gateway = config(auth=RULE_ON.format(route="openai-chat"))

    status, error = refusal(await send(gateway, "/v1/chat/completions", TEAM2, chat("gpt-4o")))

    assert (status, error["code"]) == (403, "model_not_allowed")
    # Elsewhere the rule does not apply.
    let_through(await send(gateway, "/v1/chat/completions", TEAM2, chat("gpt-4o-mini")))


def test_a_rule_naming_a_route_the_config_lacks_is_refused_at_load() -> None:
    # Before, the misspelt rule covered no request, and marketing was served gpt-4o.
    with pytest.raises(ConfigError) as refused:
        config(auth=RULE_ON.format(route="opneai-chat"))

    assert (
        "auth.access_rules[0].routes: unknown route 'opneai-chat' (rule 'gpt-4o-chat' would"
        " cover no request there); did you mean 'openai-chat'?"
    ) in str(refused.value)


def test_a_key_kept_to_a_route_the_config_lacks_is_refused_at_load() -> None:
    # Before, the key loaded and every request it made was a 403 naming the route called.
    with pytest.raises(ConfigError) as refused:
        config("      allowed_routes: [openai-chta, no-such-route]\n")

    message = str(refused.value)
    assert (
        "auth.api_keys[0].allowed_routes: unknown route 'openai-chta' (key 'team1');"
        " did you mean 'openai-chat'?"
    ) in message
    assert "auth.api_keys[0].allowed_routes: unknown route 'no-such-route' (key 'team1')\n" in (
        message + "\n"
    )


# --- a key header another route reads --------------------------------------------------

# The org's header for keys, read on every route without an `auth` of its own; the
# Anthropic route has its own (methods only), so it reads x-api-key and Authorization.
ORG_HEADER = "  default:\n    methods: [api_key]\n    api_key_header: x-org-key\n"
ANTHROPIC_ROUTE = (
    "  - name: anthropic-messages\n    path: /v1/messages\n    api: anthropic_messages\n"
)


def org_header_config() -> GatewayConfig:
    text = DEFAULT_CONFIG.read_text()
    assert ANTHROPIC_ROUTE in text
    text = text.replace(ANTHROPIC_ROUTE, ANTHROPIC_ROUTE + "    auth: {methods: [api_key]}\n")
    text = text.replace("\nauth:\n", "\nauth:\n" + ORG_HEADER, 1)
    return parse_config(text, "gateway.yaml", {})


def messages() -> bytes:
    return orjson.dumps(
        {"model": "claude-3-5-haiku-latest", "max_tokens": 5,
         "messages": [{"role": "user", "content": "hi"}]}
    )  # fmt: skip


async def test_the_orgs_key_header_never_reaches_a_provider_on_a_route_that_does_not_read_it() -> (
    None
):
    # An SDK wrapper that adds the org's header to every call, beside the Anthropic
    # SDK's own x-api-key: before, the route read x-api-key and sent x-org-key (team2's
    # secret) on to Anthropic with the request.
    gateway = org_header_config()
    sent = {"x-api-key": "team1-key", "x-org-key": "team2-key"}

    answers = await send(gateway, "/v1/messages", sent, messages())

    let_through(answers)
    assert "x-org-key" in removed_upstream(answers)


async def test_a_webhook_forwarding_the_orgs_headers_never_gets_another_routes_key_header() -> None:
    # The Anthropic route reads keys from x-org-key; a chat client that sends one too
    # (beside its Authorization) had it forwarded to a webhook asking for x-org-* (the
    # org's team and cost-center headers), and on to the provider.
    seen: dict[str, str] = {}

    async def record(request: web.Request) -> web.Response:
        seen.update({name.lower(): value for name, value in request.headers.items()})
        return web.json_response({"action": {"reason": "fine"}})

    async with webhook_server(record) as port:
        guardrails = {
            "webhooks": [
                {"name": "hook", "host": "127.0.0.1", "port": port, "forward_headers": ["x-org-*"]}
            ],
            "policies": [{"name": "hooked", "request": [{"name": "guard", "webhook": "hook"}]}],
        }
        gateway = config_with(
            guardrails,
            {
                "openai-chat": {"guardrails": "hooked"},
                "anthropic-messages": {
                    "auth": {"methods": ["api_key"], "api_key_header": "x-org-key"}
                },
            },
        )
        sent = {
            "authorization": "Bearer team1-key",
            "x-org-key": "team2-key",
            "x-org-team": "blue",
        }
        answers = await send(gateway, "/v1/chat/completions", sent, chat("gpt-4o-mini"))

    let_through(answers)
    assert seen["x-org-team"] == "blue"
    assert "x-org-key" not in seen
    assert "x-org-key" in removed_upstream(answers)

"""Review s42: authentication and access, as an operator writing rules and keys.

Each test loads a config as `extproc check-config` and `serve` do, or drives the real
processor with ext_proc messages, and checks what the operator or the client sees.
"""

from __future__ import annotations

import pytest

from extproc.config.loader import ConfigError
from tests.unit.test_review_s36_auth import chat, config, let_through, refusal, send

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

"""An Anthropic client asking for a model whose provider cannot answer Anthropic's API
(an OpenAI-compatible one: nothing translates a Messages body to OpenAI's API), on a
failover chain whose fallbacks are Claude.

The fallbacks take over when the model fails, never in its place: served by them, the
client would get another model than it asked for on every request, without a word. So
the request is still refused, as without fallbacks, but the 400 now names the fallbacks
that speak the client's API and how to reach them; before, it said only that the route
cannot translate to the provider's API, which reads as a broken chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from extproc.config import GatewayConfig
from extproc.config.loader import parse_config
from tests.unit.test_guard_flow import Gateway, immediate

CLAUDE = "claude-sonnet-4-0"
LLAMA = "meta.llama3-8b-instruct-v1:0"


def chain(model: str, *fallbacks: str, **key: Any) -> GatewayConfig:
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    for entry in raw["models"]:
        if entry["name"] == model:
            entry["fallbacks"] = list(fallbacks)
    raw["auth"]["api_keys"][0].update(key)
    return parse_config(yaml.safe_dump(raw), "test", {})


def messages(model: str) -> bytes:
    return orjson.dumps(
        {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    )


async def refusal(config: GatewayConfig, model: str) -> tuple[int, dict[str, Any]]:
    answers = await Gateway(config).send("/v1/messages", messages(model))
    return immediate(answers[-1])


async def test_the_refusal_names_the_claude_fallbacks_of_an_openai_primary() -> None:
    status, body = await refusal(chain("gpt-4o", CLAUDE), "gpt-4o")
    assert status == 400
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"] == (
        "model 'gpt-4o' is served by a provider that speaks the openai API, which this route "
        f"(anthropic_messages) cannot translate to; its fallbacks ('{CLAUDE}') speak this API "
        f"but serve only when 'gpt-4o' fails, never in its place: ask for '{CLAUDE}' by name"
    )


async def test_a_bedrock_primary_that_is_not_claude_names_them_too() -> None:
    _, body = await refusal(chain(LLAMA, CLAUDE), LLAMA)
    message = body["error"]["message"]
    assert message.startswith(f"model '{LLAMA}' is a Bedrock model that does not speak")
    assert message.endswith(f"never in its place: ask for '{CLAUDE}' by name")


async def test_fallbacks_that_cannot_answer_either_are_not_named() -> None:
    _, body = await refusal(chain("gpt-4o", LLAMA), "gpt-4o")
    assert body["error"]["message"].endswith("cannot translate to")


async def test_a_fallback_the_key_may_not_use_is_not_named() -> None:
    config = chain("gpt-4o", CLAUDE, allowed_models=["gpt-4o"])
    _, body = await refusal(config, "gpt-4o")
    assert CLAUDE not in body["error"]["message"]

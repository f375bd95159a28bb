"""Request guards read OpenAI's metadata and end-user identifiers only where a provider
gets them: embeddings on Bedrock and Vertex AI, and chat on Claude at Vertex AI.

An OpenAI request's ``metadata``, ``user``, ``safety_identifier`` and ``prompt_cache_key``
are read by request guards because the provider keeps them. A request the gateway
translates leaves them out: an embeddings request to Titan or Cohere on Bedrock, or to
Google's ``:predict`` on Vertex, sends the texts alone; an OpenAI chat request to Claude on
Vertex AI goes as Anthropic's Messages body, with only the end user's identifier (as
``metadata.user_id``). Read anyway, a MASK guard refused such a request (a metadata key
holding an address, a REJECT term in a metadata value) for text no provider would get,
as the chat requests to Bedrock and Anthropic were before the guards learnt which fields
each provider gets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc.config.loader import parse_config
from extproc.config.model import GatewayConfig
from extproc.runtime import Services
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.guard_helpers import config_with
from tests.unit.test_bedrock_invoke_review import AUTH, signing_processor
from tests.unit.test_guard_call_names import FALCON, GUARDS, MESSAGE
from tests.unit.test_guard_flow import upstream_body
from tests.unit.test_guard_tool_definitions import chat, refused
from tests.unit.test_vertex_review import OPENAI_KEY, vertex_gateway

EMAIL = "jane@example.com"
# Every field guards read in an OpenAI request's metadata, each holding what a guard of
# GUARDS stops: a REJECT term (an access key), or an address a MASK guard cannot rewrite
# in a metadata key.
LEFT_OUT: dict[str, Any] = {
    "user": EMAIL,
    "safety_identifier": EMAIL,
    "prompt_cache_key": f"conv-{EMAIL}",
    "metadata": {EMAIL: FALCON},
}
FIELDS = {"user", "safety_identifier", "prompt_cache_key", "metadata"}
EMBEDDINGS = "/v1/embeddings"
TITAN = "amazon.titan-embed-text-v2:0"
CHAT = "/v1/chat/completions"


def embeddings(model: str, **fields: Any) -> bytes:
    return orjson.dumps({"model": model, "input": "Hi", **fields})


def reaches_nothing_of(answers: list[Any]) -> dict[str, Any]:
    """The body the provider got, asserting it carries none of LEFT_OUT's text."""
    assert refused(answers) is None, refused(answers)
    sent = upstream_body(answers[1])
    text = orjson.dumps(sent).decode()
    assert EMAIL not in text and FALCON not in text
    return sent


# --- embeddings on Bedrock --------------------------------------------------------------------


@pytest.mark.parametrize("model", [TITAN, "cohere.embed-english-v3"])
async def test_embeddings_on_bedrock_are_not_refused_for_fields_bedrock_never_gets(
    services: Services, model: str
) -> None:
    config = config_with(GUARDS, {"openai-embeddings": {"guardrails": "p"}})
    async with signing_processor(config, services) as processor:
        answers = await run_stream(
            processor,
            [
                request_headers(EMBEDDINGS, headers=AUTH),
                request_body(embeddings(model, **LEFT_OUT)),
            ],
        )
    sent = reaches_nothing_of(answers)
    assert not FIELDS & set(sent)


async def test_embeddings_on_bedrock_still_read_the_input(services: Services) -> None:
    config = config_with(GUARDS, {"openai-embeddings": {"guardrails": "p"}})
    body = orjson.dumps({"model": TITAN, "input": f"key {FALCON}"})
    async with signing_processor(config, services) as processor:
        answers = await run_stream(
            processor, [request_headers(EMBEDDINGS, headers=AUTH), request_body(body)]
        )
    found = refused(answers)
    assert found is not None and found[1]["error"]["message"] == MESSAGE


# --- Vertex AI: embeddings, and chat on Claude --------------------------------------------------


def guarded(*routes: str) -> Callable[[dict[str, Any]], None]:
    """A change to ``vertex_config``: GUARDS on ``routes``, and Google's text embedding model."""

    def change(raw: dict[str, Any]) -> None:
        raw["guardrails"] = GUARDS
        for route in raw["routes"]:
            if route["name"] in routes:
                route["guardrails"] = "p"
        raw["models"].append(
            {
                "name": "vertex-embed",
                "provider": "vertex",
                "upstream_model": "text-embedding-005",
                "kind": "embeddings",
            }
        )

    return change


async def send(processor: Any, path: str, body: bytes) -> list[Any]:
    return await run_stream(
        processor, [request_headers(path, headers=OPENAI_KEY), request_body(body)]
    )


async def test_embeddings_on_vertex_are_not_refused_for_fields_predict_never_gets(
    tmp_path: Path,
) -> None:
    async with vertex_gateway(tmp_path, MemoryLog(), guarded("openai-embeddings")) as gateway:
        answers = await send(gateway, EMBEDDINGS, embeddings("vertex-embed", **LEFT_OUT))
    sent = reaches_nothing_of(answers)
    assert sent["instances"] == [{"content": "Hi"}]


async def test_chat_on_claude_at_vertex_reads_only_the_identifier_claude_gets(
    tmp_path: Path,
) -> None:
    claude = {"model": "sonnet-vertex"}
    without_user = {k: v for k, v in LEFT_OUT.items() if k != "user"}
    async with vertex_gateway(tmp_path, MemoryLog(), guarded("openai-chat")) as gateway:
        # Neither the metadata nor the cache key goes; the safety identifier would go as
        # metadata.user_id, so a mask removes it.
        sent = reaches_nothing_of(await send(gateway, CHAT, chat(**without_user, **claude)))
        assert "metadata" not in sent
        sent = reaches_nothing_of(
            await send(gateway, CHAT, chat(**without_user, user="u-4f2a", **claude))
        )
        assert sent["metadata"] == {"user_id": "u-4f2a"}
        # A REJECT guard still reads the identifier Claude gets.
        found = refused(await send(gateway, CHAT, chat(user=FALCON, **claude)))
        assert found is not None and found[1]["error"]["message"] == MESSAGE


async def test_chat_on_gemini_at_vertex_reads_every_field(tmp_path: Path) -> None:
    # Vertex's OpenAI-compatible endpoint takes the body as OpenAI's: everything goes.
    async with vertex_gateway(tmp_path, MemoryLog(), guarded("openai-chat")) as gateway:
        body = chat(model="gemini-flash", metadata={"ticket": FALCON})
        found = refused(await send(gateway, CHAT, body))
    assert found is not None and found[1]["error"]["message"] == MESSAGE


def titan_falling_back_to_openai() -> GatewayConfig:
    """Titan's embeddings with OpenAI's text-embedding-3-small as a fallback, guarded."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    for entry in raw["models"]:
        if entry["name"] == TITAN:
            entry["fallbacks"] = ["text-embedding-3-small"]
    raw["guardrails"] = GUARDS
    for route in raw["routes"]:
        if route["name"] == "openai-embeddings":
            route["guardrails"] = "p"
    return parse_config(yaml.safe_dump(raw), "test", {})


async def test_a_fallback_that_cannot_serve_the_embeddings_is_not_read_for(
    services: Services,
) -> None:
    # OpenAI's model embeds in another space: the failover never tries it for Titan's
    # request (``stages.attempt.serves_request``), so it gets none of the fields either.
    async with signing_processor(titan_falling_back_to_openai(), services) as processor:
        answers = await run_stream(
            processor,
            [
                request_headers(EMBEDDINGS, headers=AUTH),
                request_body(embeddings(TITAN, **LEFT_OUT)),
            ],
        )
    # The body goes on to the chain's attempts, each translating it for its provider.
    assert refused(answers) is None, refused(answers)

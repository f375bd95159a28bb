"""Request guards read what the provider stores beside the prompt: metadata and identifiers.

The model never reads a request's ``metadata``, ``user``, ``safety_identifier`` or
``prompt_cache_key`` (OpenAI), ``metadata.user_id`` (Anthropic), ``requestMetadata``
(Converse) or ``labels`` (Vertex AI), but the provider keeps them: in stored completions
and its dashboard, for abuse checks, in invocation logs, in billing. No guard read them, so
an access key or an address put there (an app that sets ``user`` to the user's e-mail
address) reached the provider past every guard. Now a ``REJECT`` guard refuses; an OpenAI
metadata value is a free tag and is masked in place; identifiers, keys, Bedrock's metadata
and Vertex's labels (which take a few characters only) refuse on a mask.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.runtime import Services
from tests.unit.test_gemini_guard_flow import GENERATE, gateway, refusal, upstream
from tests.unit.test_guard_call_names import FALCON, GUARDS, MESSAGE, gateway_for
from tests.unit.test_guard_flow import upstream_body
from tests.unit.test_guard_tool_definitions import (
    FORBIDDEN,
    chat,
    converse,
    gemini,
    messages,
    refused,
    responses,
    through_converse,
    vertex,  # noqa: F401 (the fixture the Gemini test takes)
)
from tests.unit.test_guard_tool_definitions import MESSAGE as FORBIDDEN_MESSAGE

EMAIL = "jane@example.com"


def embeddings(**fields: Any) -> bytes:
    return orjson.dumps({"model": "text-embedding-3-small", "input": "Hi", **fields})


def completions(**fields: Any) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "prompt": "Hi", **fields})


OPENAI = [
    ("openai-chat", "/v1/chat/completions", chat),
    ("openai-responses", "/v1/responses", responses),
    ("openai-embeddings", "/v1/embeddings", embeddings),
]
OPENAI_IDS = ["chat", "responses", "embeddings"]
# Each field holding an identifier, and where it is.
IDENTIFIERS = ["user", "safety_identifier", "prompt_cache_key"]


@pytest.mark.parametrize(("route", "path", "body"), OPENAI, ids=OPENAI_IDS)
@pytest.mark.parametrize("where", ["value", "key", *IDENTIFIERS])
async def test_a_key_in_openai_metadata_or_an_identifier_refuses_the_request(
    route: str, path: str, body: Any, where: str
) -> None:
    fields: dict[str, Any] = {
        "value": {"metadata": {"ticket": FALCON}},
        "key": {"metadata": {FALCON: "x"}},
    }.get(where, {where: FALCON})
    gate = gateway_for(route)
    found = refused(await gate.send(path, body(**fields)))
    assert found is not None, f"{where} reached the provider unread"
    assert found[0] == 403 and found[1]["error"]["message"] == MESSAGE
    assert {"guard": "aws-keys", "phase": "request", "action": "reject"} in gate.log()["guardrails"]


@pytest.mark.parametrize(("route", "path", "body"), OPENAI, ids=OPENAI_IDS)
async def test_an_openai_metadata_value_is_masked_in_place(
    route: str, path: str, body: Any
) -> None:
    answers = await gateway_for(route).send(
        path, body(metadata={"customer": f"{EMAIL} (VIP)", "team": "ops"}, user="u-1")
    )
    assert refused(answers) is None
    sent = upstream_body(answers[1])
    assert sent["metadata"] == {"customer": "<EMAIL> (VIP)", "team": "ops"}
    assert sent["user"] == "u-1"


@pytest.mark.parametrize(("route", "path", "body"), OPENAI, ids=OPENAI_IDS)
@pytest.mark.parametrize(
    ("fields", "what"),
    [({"user": EMAIL}, "the end user's identifier"),
     ({"safety_identifier": EMAIL}, "the end user's identifier"),
     ({"prompt_cache_key": f"conv-{EMAIL}"}, "a prompt cache key"),
     ({"metadata": {EMAIL: "x"}}, "a metadata key")],
    ids=["user", "safety_identifier", "prompt_cache_key", "metadata-key"],
)  # fmt: skip
async def test_a_mask_matching_an_identifier_refuses_rather_than_merge_users(
    route: str, path: str, body: Any, fields: dict[str, Any], what: str
) -> None:
    found = refused(await gateway_for(route).send(path, body(**fields)))
    assert found is not None and found[0] == 403
    message = found[1]["error"]["message"]
    assert message == f"Rejected by guardrail 'pii': {what} contains EMAIL, which cannot be masked"
    assert EMAIL not in message


async def test_a_completions_user_is_read() -> None:
    gate = gateway_for("openai-completions")
    found = refused(await gate.send("/v1/completions", completions(user=FALCON)))
    assert found is not None and found[1]["error"]["message"] == MESSAGE


async def test_anthropic_metadata_user_id_is_read() -> None:
    gate = gateway_for("anthropic-messages")
    found = refused(await gate.send("/v1/messages", messages(metadata={"user_id": FALCON})))
    assert found is not None and found[0] == 403
    assert found[1]["error"]["message"] == MESSAGE
    found = refused(await gate.send("/v1/messages", messages(metadata={"user_id": EMAIL})))
    assert found is not None
    assert (
        "the end user's identifier contains EMAIL, which cannot be masked"
        in orjson.dumps(found[1]).decode()
    )
    answers = await gate.send("/v1/messages", messages(metadata={"user_id": "u-4f2a"}))
    assert refused(answers) is None
    assert upstream_body(answers[1])["metadata"] == {"user_id": "u-4f2a"}


async def test_converse_request_metadata_is_read(services: Services) -> None:
    body = converse(requestMetadata={"ticket": FORBIDDEN})
    found = refused(await through_converse(body, services))
    assert found is not None, "requestMetadata reached Bedrock unread"
    assert found[0] == 403 and FORBIDDEN_MESSAGE in orjson.dumps(found[1]).decode()
    # Bedrock takes no "<" or ">" there: a mask would make it refuse the call.
    found = refused(await through_converse(converse(requestMetadata={"to": EMAIL}), services))
    assert found is not None
    assert (
        "a metadata value contains EMAIL, which cannot be masked" in orjson.dumps(found[1]).decode()
    )
    answers = await through_converse(converse(requestMetadata={"team": "ops"}), services)
    assert refused(answers) is None
    assert upstream_body(answers[1])["requestMetadata"] == {"team": "ops"}


async def test_vertex_labels_are_read(
    vertex: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    async with gateway(vertex, GUARDS, guardrails="p") as gw:
        status, error = refusal((await gw.send(GENERATE, gemini(labels={"t": FALCON})))[-1])
        assert status == 403 and error["error"]["message"] == MESSAGE
        # Google takes lowercase letters, digits, "_" and "-" there: a mask would break it.
        status, error = refusal((await gw.send(GENERATE, gemini(labels={"t": "EMP-123456"})))[-1])
        assert status == 403
        assert "a label contains EMPLOYEE_ID, which cannot be masked" in error["error"]["message"]
        sent = upstream(await gw.send(GENERATE, gemini(labels={"team": "ops"})))
    assert sent["labels"] == {"team": "ops"}

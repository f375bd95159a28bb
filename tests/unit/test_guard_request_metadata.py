"""Request guards read what the provider stores beside the prompt: metadata and identifiers.

The model never reads a request's ``metadata``, ``user``, ``safety_identifier`` or
``prompt_cache_key`` (OpenAI), ``metadata.user_id`` (Anthropic), ``requestMetadata``
(Converse) or ``labels`` (Vertex AI), but the provider keeps them: in stored completions
and its dashboard, for abuse checks, in invocation logs, in billing. No guard read them, so
an access key or an address put there (an app that sets ``user`` to the user's e-mail
address) reached the provider past every guard. Now a ``REJECT`` guard refuses; an OpenAI
metadata value is a free tag and is masked in place; metadata keys, Bedrock's metadata
and Vertex's labels (which take a few characters only) refuse on a mask.

An end user's identifier and a cache key refused on a mask too, at first: an app that sets
``user`` to the user's e-mail address (a common choice) had every request refused on a route
with an e-mail mask guard. Now a mask there removes the field: the provider gets the request
as one naming no end user (no cache key), and the address never reaches it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import yaml

from extproc.config.loader import parse_config
from extproc.runtime import Services
from extproc.testing import request_body, request_headers, run_stream, serve_mock
from tests.unit.guard_helpers import config_with
from tests.unit.test_bedrock_invoke_review import AUTH, HAIKU, signing_processor
from tests.unit.test_gemini_guard_flow import GENERATE, gateway, refusal, upstream
from tests.unit.test_guard_call_names import FALCON, GUARDS, MESSAGE, gateway_for
from tests.unit.test_guard_flow import Gateway, upstream_body
from tests.unit.test_guard_tool_definitions import (
    FORBIDDEN,
    POLICIES,
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
from tests.unit.test_guardrail_review import Hook, serving

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


async def test_a_mask_matching_a_metadata_key_refuses_rather_than_rename_it() -> None:
    found = refused(
        await gateway_for("openai-chat").send("/v1/chat/completions", chat(metadata={EMAIL: "x"}))
    )
    assert found is not None and found[0] == 403
    message = found[1]["error"]["message"]
    assert message == (
        "Rejected by guardrail 'pii': a metadata key contains EMAIL, which cannot be masked"
    )
    assert EMAIL not in message


@pytest.mark.parametrize(("route", "path", "body"), OPENAI, ids=OPENAI_IDS)
@pytest.mark.parametrize(
    "fields",
    [{"user": EMAIL},
     {"safety_identifier": f"Jane <{EMAIL}>"},
     {"prompt_cache_key": f"conv-{EMAIL}"},
     {"user": EMAIL, "safety_identifier": EMAIL, "prompt_cache_key": f"conv-{EMAIL}"}],
    ids=["user", "safety_identifier", "prompt_cache_key", "all-three"],
)  # fmt: skip
async def test_a_mask_matching_an_identifier_removes_it_and_the_request_goes_on(
    route: str, path: str, body: Any, fields: dict[str, Any]
) -> None:
    # An app sending the user's address as ``user`` had every request refused (403).
    gate = gateway_for(route)
    answers = await gate.send(path, body(metadata={"team": "ops"}, **fields))
    assert refused(answers) is None, "an address as the end user's id refused the request"
    sent = upstream_body(answers[1])
    for field in fields:
        # Gone, not replaced: "<EMAIL>" alike for every user would merge them all in the
        # provider's abuse checks (and share one prompt cache).
        assert field not in sent
    assert EMAIL not in orjson.dumps(sent).decode()
    assert sent["metadata"] == {"team": "ops"} and sent["model"]
    assert {"guard": "pii", "phase": "request", "action": "mask"} in gate.log()["guardrails"]
    assert gate.decisions(guard="pii", phase="request", action="mask") == 1


@pytest.mark.parametrize(("route", "path", "body"), OPENAI, ids=OPENAI_IDS)
async def test_an_identifier_with_nothing_to_mask_is_sent_as_it_came(
    route: str, path: str, body: Any
) -> None:
    fields = {"user": "u-4f2a", "safety_identifier": "h-91c", "prompt_cache_key": "conv-7"}
    gate = gateway_for(route)
    answers = await gate.send(path, body(**fields))
    sent = upstream_body(answers[1])
    assert {field: sent[field] for field in fields} == fields
    assert {"guard": "pii", "phase": "request", "action": "pass"} in gate.log()["guardrails"]


async def test_a_mask_in_one_identifier_leaves_the_others() -> None:
    answers = await gateway_for("openai-chat").send(
        "/v1/chat/completions", chat(user=EMAIL, safety_identifier="h-91c", prompt_cache_key="c7")
    )
    sent = upstream_body(answers[1])
    assert "user" not in sent
    assert sent["safety_identifier"] == "h-91c" and sent["prompt_cache_key"] == "c7"


async def test_a_reject_guard_still_refuses_an_identifier_a_mask_guard_also_matches() -> None:
    # The mask would remove the field, but a REJECT guard's match refuses the request.
    gate = gateway_for("openai-chat")
    found = refused(await gate.send("/v1/chat/completions", chat(user=f"{EMAIL} {FALCON}")))
    assert found is not None and found[0] == 403
    assert found[1]["error"]["message"] == MESSAGE
    assert {"guard": "aws-keys", "phase": "request", "action": "reject"} in gate.log()["guardrails"]


async def test_a_chat_request_translated_for_claude_names_no_end_user_once_masked() -> None:
    # The Anthropic translator writes ``user`` (or ``safety_identifier``) as
    # ``metadata.user_id``: a removed one reaches Claude under neither name.
    gate = gateway_for("openai-chat")
    claude = {"model": "claude-3-5-haiku-latest"}
    answers = await gate.send("/v1/chat/completions", chat(user=EMAIL, **claude))
    assert refused(answers) is None
    sent = upstream_body(answers[1])
    assert "metadata" not in sent and EMAIL not in orjson.dumps(sent).decode()
    answers = await gate.send(
        "/v1/chat/completions", chat(user=EMAIL, safety_identifier="h-91c", **claude)
    )
    assert upstream_body(answers[1])["metadata"] == {"user_id": "h-91c"}


def mask_addresses(call: dict[str, Any]) -> dict[str, Any]:
    """A webhook's mask verdict: every entry with the address replaced."""
    entries = [
        {**entry, "content": entry["content"].replace(EMAIL, "[redacted]")}
        for entry in call["body"]["messages"]
    ]
    return {"action": {"body": {"messages": entries}}}


async def test_a_webhook_mask_of_the_user_removes_it_and_later_guards_never_read_it() -> None:
    hook = Hook(mask_addresses, {"action": {"reason": "fine"}})
    async with serving(hook.handle) as port:
        webhook = {"host": "127.0.0.1", "port": port}
        guardrails = {
            "webhooks": [{"name": "first", **webhook}, {"name": "second", **webhook}],
            "policies": [{"name": "hooked", "request": [
                {"name": "masking-hook", "webhook": "first"},
                {"name": "later-hook", "webhook": "second"},
                {"name": "pii", "builtins": ["EMAIL"], "action": "mask"}]}],
        }  # fmt: skip
        gate = Gateway(config_with(guardrails, {"openai-chat": {"guardrails": "hooked"}}))
        answers = await gate.send(
            "/v1/chat/completions", chat(user=EMAIL, prompt_cache_key="conv-7")
        )
    assert refused(answers) is None, "a webhook's mask of user refused the request"
    sent = upstream_body(answers[1])
    assert "user" not in sent and sent["prompt_cache_key"] == "conv-7"
    first, later = (call["body"]["messages"] for call in hook.calls)
    assert {"role": "system", "content": EMAIL} in first
    # The next webhook reads the request the provider gets: no entry for the removed field.
    assert later == [entry for entry in first if entry["content"] != EMAIL]
    decisions = gate.log()["guardrails"]
    assert {"guard": "masking-hook", "phase": "request", "action": "mask"} in decisions
    assert {"guard": "later-hook", "phase": "request", "action": "pass"} in decisions
    assert {"guard": "pii", "phase": "request", "action": "pass"} in decisions


async def test_moderation_after_a_mask_reads_the_request_without_the_removed_field() -> None:
    async with serve_mock() as mock_url:
        guardrails = {
            "moderation": [{"name": "mod", "base_url": f"{mock_url}/v1", "api_key": "mock-key",
                            "roles": ["user", "system"]}],
            "policies": [{"name": "p", "request": [
                {"name": "pii", "builtins": ["EMAIL"], "action": "mask"},
                {"name": "moderated", "moderation": "mod"}]}],
        }  # fmt: skip
        gate = Gateway(config_with(guardrails, {"openai-responses": {"guardrails": "p"}}))
        # The removed id would have been flagged: moderation reads what the provider gets.
        answers = await gate.send("/v1/responses", responses(user=f"{EMAIL} bomb"))
    assert refused(answers) is None
    assert "user" not in upstream_body(answers[1])
    decisions = gate.log()["guardrails"]
    assert {"guard": "pii", "phase": "request", "action": "mask"} in decisions
    assert {"guard": "moderated", "phase": "request", "action": "pass"} in decisions


async def test_a_completions_user_is_read() -> None:
    gate = gateway_for("openai-completions")
    found = refused(await gate.send("/v1/completions", completions(user=FALCON)))
    assert found is not None and found[1]["error"]["message"] == MESSAGE


async def test_anthropic_metadata_user_id_is_read() -> None:
    gate = gateway_for("anthropic-messages")
    found = refused(await gate.send("/v1/messages", messages(metadata={"user_id": FALCON})))
    assert found is not None and found[0] == 403
    assert found[1]["error"]["message"] == MESSAGE
    answers = await gate.send("/v1/messages", messages(metadata={"user_id": "u-4f2a"}))
    assert refused(answers) is None
    assert upstream_body(answers[1])["metadata"] == {"user_id": "u-4f2a"}


async def test_anthropic_metadata_user_id_masked_is_removed_with_its_metadata() -> None:
    gate = gateway_for("anthropic-messages")
    answers = await gate.send("/v1/messages", messages(metadata={"user_id": EMAIL}))
    assert refused(answers) is None, "an address as metadata.user_id refused the request"
    sent = upstream_body(answers[1])
    # The body a client naming no end user sends: no user_id, and no empty metadata.
    assert "metadata" not in sent
    assert sent["messages"] == [{"role": "user", "content": "Hi"}]
    assert {"guard": "pii", "phase": "request", "action": "mask"} in gate.log()["guardrails"]


async def test_a_bedrock_count_of_a_claude_body_removes_its_user_id(services: Services) -> None:
    # The counted InvokeModel body is Claude's: read as the call it counts is, its
    # metadata.user_id is removed (it was read as OpenAI metadata, and masked in place).
    invoked = orjson.loads(messages(metadata={"user_id": EMAIL}))
    del invoked["model"]
    invoked["anthropic_version"] = "bedrock-2023-05-31"
    encoded = base64.b64encode(orjson.dumps(invoked)).decode()
    body = {"input": {"invokeModel": {"body": encoded}}}
    config = config_with(POLICIES, {"bedrock-converse": {"guardrails": "p"}})
    async with signing_processor(config, services) as processor:
        answers = await run_stream(
            processor,
            [request_headers(f"/model/{quote(HAIKU, safe='')}/count-tokens", headers=AUTH),
             request_body(orjson.dumps(body))],
        )  # fmt: skip
    assert refused(answers) is None
    sent = upstream_body(answers[1])
    counted = orjson.loads(base64.b64decode(sent["input"]["invokeModel"]["body"]))
    assert "metadata" not in counted and counted["messages"] == invoked["messages"]


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


# --- fields the translation leaves out ------------------------------------------------------
#
# An OpenAI chat request the gateway translates for another provider reaches it without
# the fields that provider has no place for: Converse carries none of them, Anthropic's
# Messages API only the end user's identifier (as ``metadata.user_id``). Read there, a
# MASK guard refused the request for an identifier or a key the provider would never get:
# an app that sets ``user`` to the user's e-mail address got a 403 on every Claude or
# Bedrock model after the session's change, though nothing of it left the gateway.

LEFT_OUT = {
    "user": EMAIL,
    "safety_identifier": EMAIL,
    "prompt_cache_key": f"conv-{EMAIL}",
    "metadata": {EMAIL: FALCON},
}


async def test_fields_converse_has_no_place_for_are_not_read(services: Services) -> None:
    config = config_with(GUARDS, {"openai-chat": {"guardrails": "p"}})
    body = orjson.loads(chat(**LEFT_OUT))
    body["model"] = HAIKU
    async with signing_processor(config, services) as processor:
        answers = await run_stream(
            processor,
            [
                request_headers("/v1/chat/completions", headers=AUTH),
                request_body(orjson.dumps(body)),
            ],
        )
    assert refused(answers) is None
    sent = upstream_body(answers[1])
    assert not {"user", "safety_identifier", "prompt_cache_key", "metadata"} & set(sent)
    assert EMAIL not in orjson.dumps(sent).decode()


async def test_on_anthropic_only_the_identifier_it_is_sent_is_read() -> None:
    gate = gateway_for("openai-chat")
    claude = {"model": "claude-3-5-haiku-latest"}
    left_out = {k: v for k, v in LEFT_OUT.items() if k != "user"}
    answers = await gate.send("/v1/chat/completions", chat(**left_out, **claude))
    # Sent on as metadata.user_id when there is no `user`: read, and a mask removes it.
    assert refused(answers) is None
    sent = upstream_body(answers[1])
    assert "metadata" not in sent and EMAIL not in orjson.dumps(sent).decode()
    left_out["safety_identifier"] = "u-4f2a"
    answers = await gate.send("/v1/chat/completions", chat(**left_out, **claude))
    assert refused(answers) is None
    sent = upstream_body(answers[1])
    assert sent["metadata"] == {"user_id": "u-4f2a"}
    assert EMAIL not in orjson.dumps(sent).decode()
    # A REJECT guard still reads what goes: the identifier Anthropic gets.
    found = refused(await gate.send("/v1/chat/completions", chat(user=FALCON, **claude)))
    assert found is not None and found[1]["error"]["message"] == MESSAGE
    # `user` goes in its place when both are set: the safety identifier stays here.
    answers = await gate.send(
        "/v1/chat/completions", chat(user="u-1", safety_identifier=EMAIL, **claude)
    )
    assert refused(answers) is None
    assert upstream_body(answers[1])["metadata"] == {"user_id": "u-1"}


def claude_falling_back_to_openai() -> Gateway:
    """Claude (Anthropic) with OpenAI's gpt-4o-mini as its fallback, guarded on chat."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    for entry in raw["models"]:
        if entry["name"] == "claude-3-5-haiku-latest":
            entry["fallbacks"] = ["gpt-4o-mini"]
    raw["guardrails"] = GUARDS
    for route in raw["routes"]:
        if route["name"] == "openai-chat":
            route["guardrails"] = "p"
    return Gateway(parse_config(yaml.safe_dump(raw), "test", {}))


async def test_a_failover_chain_reaching_openai_reads_every_field() -> None:
    # The fallback's attempt takes the body as it is, so what OpenAI would store is read
    # as on an OpenAI model, though the primary (Anthropic) would never get it.
    # A REJECT guard's term there refuses (a mask would remove the field, as anywhere).
    body = chat(model="claude-3-5-haiku-latest", prompt_cache_key=f"conv-{FALCON}")
    found = refused(await claude_falling_back_to_openai().send("/v1/chat/completions", body))
    assert found is not None and found[1]["error"]["message"] == MESSAGE

"""Review s36: authentication and authorization, played as a client with a narrow key.

Each test drives the real processor with ext_proc messages and checks what the
client (its status, its error) or the provider (the headers and body it is sent)
would see.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import orjson
import pytest

from extproc.config import GatewayConfig, parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.headers import CLUSTER
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog

# team1 (alice, engineering); team2 (bob, marketing).
TEAM1 = "      user_id: alice\n      group_id: engineering\n"
SECRET = "a-shared-secret-that-is-long-enough-000"
ISSUER = "https://dev.example.com"
JWT_PROVIDER = (
    "  jwt_providers:\n    - name: dev\n"
    f"      issuer: {ISSUER}\n      shared_secret: {SECRET}\n      algorithms: [HS256]\n"
    "      claims: {user_id: [sub], group_id: [groups]}\n"
)
# Claude 3 Haiku (under every Bedrock id) and gpt-4o for engineering alone.
RULES = (
    "  access_rules:\n"
    "    - {name: haiku-for-engineering, models: [haiku], groups: [engineering]}\n"
    "    - {name: gpt-4o-for-engineering, models: [gpt-4o], groups: [engineering]}\n"
)


def config(team1: str = "", auth: str = "") -> GatewayConfig:
    text = DEFAULT_CONFIG.read_text()
    assert TEAM1 in text
    text = text.replace(TEAM1, TEAM1 + team1, 1)
    text = text.replace("\nauth:\n", "\nauth:\n" + auth, 1)
    return parse_config(text, "gateway.yaml", {})


NARROW = config("      allowed_models: [gpt-4o-mini]\n")


def chat(model: str) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


def converse() -> bytes:
    return orjson.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})


async def send(
    gateway: GatewayConfig,
    path: str,
    headers: dict[str, str],
    body: bytes | None = None,
    method: str = "POST",
    services: Services | None = None,
) -> list[Any]:
    messages = [request_headers(path, method=method, headers=headers)]
    if body is not None:
        messages.append(request_body(body))
    runtime = Runtime(gateway, services or Services(GatewayMetrics(), MemoryLog()))
    for signer in runtime.signers.values():
        await signer.start()  # Bedrock's requests are signed (static AWS keys: no I/O)
    return await run_stream(Processor(lambda: runtime, default_stages()), messages)


def refusal(answers: list[Any]) -> tuple[int, dict[str, Any]]:
    last = answers[-1]
    assert last.HasField("immediate_response"), "the request was let through"
    answer = last.immediate_response
    body = orjson.loads(answer.body)
    # OpenAI's and Anthropic's shapes nest the error; Bedrock's is the error itself.
    error: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else body
    if "code" not in error and "message" in error:
        # Anthropic's: the message names the refusal, no code.
        error = {**error, "code": "model_not_allowed" if "may not use" in error["message"] else ""}
    return answer.status.code, error


def let_through(answers: list[Any]) -> Any:
    """The body phase's answer of a request the gateway sent on to a provider."""
    last = answers[-1]
    assert not last.HasField("immediate_response"), last.immediate_response.body
    response = last.request_body.response
    assert CLUSTER in {h.header.key for h in response.header_mutation.set_headers}
    return response


def removed_upstream(answers: list[Any]) -> set[str]:
    return set(answers[0].request_headers.response.header_mutation.remove_headers)


def token(**claims: Any) -> str:
    payload = {"iss": ISSUER, "sub": "mallory", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, SECRET, "HS256")


# --- the model a request reaches ----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "first"),
    [
        ("/v1/chat/completions", b'"model":"gpt-4o"'),
        # The second key spelt with an escape: no byte count finds it.
        ("/v1/chat/completions", b'"mod\\u0065l":"gpt-4o"'),
        # The path names the allowed model, the body's last key agrees, its first does not.
        ("/openai/gpt-4o-mini", b'"model":"gpt-4o"'),
        ("/v1/messages", b'"model":"claude-sonnet-4-0"'),
    ],
)
async def test_a_repeated_model_key_never_reaches_the_provider_unchecked(
    path: str, first: bytes
) -> None:
    """A body naming a forbidden model, then an allowed one, under one key: the gateway's
    parser keeps the last (checked, allowed), and the body went on as the client wrote
    it, so a provider whose parser keeps the first served the forbidden model. The
    provider must be sent the model that was checked, and only it."""
    allowed = "claude-3-5-haiku-latest" if path == "/v1/messages" else "gpt-4o-mini"
    gateway = config("      allowed_models: [gpt-4o-mini, claude-3-5-haiku-latest]\n")
    body = (
        b"{" + first + b',"model":"' + allowed.encode() + b'","max_tokens":5,'
        b'"messages":[{"role":"user","content":"hi"}]}'
    )
    answers = await send(gateway, path, {"authorization": "Bearer team1-key"}, body)
    if answers[-1].HasField("immediate_response"):
        status, error = refusal(answers)
        assert status == 400 or error["code"] == "model_not_allowed"
        return
    sent = let_through(answers).body_mutation.body or body
    assert first not in sent, sent
    assert orjson.loads(sent)["model"] == allowed


@pytest.mark.parametrize(
    "model",
    ["GPT-4o", " gpt-4o", "gpt-4o\t", "gpt-4o-mini-2024-07-18"],
)
async def test_a_narrow_key_gets_no_other_spelling_of_a_forbidden_model(model: str) -> None:
    answers = await send(
        NARROW, "/anthropic", {"authorization": "Bearer team1-key"}, chat(model)
    )  # a route with a catch-all provider: unknown names go there as written
    status, _ = refusal(answers)
    assert status in (403, 404)


@pytest.mark.parametrize(
    "model",
    [
        "haiku",
        "Haiku",
        "anthropic.claude-3-haiku-20240307-v1:0",
        "us.anthropic.claude-3-haiku-20240307-v1:0",
        "global.anthropic.claude-3-haiku-20240307-v1:0",
        "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
        "eu.anthropic.claude-3-haiku-20240307-v1:0",
    ],
)
async def test_a_group_kept_from_a_bedrock_model_reaches_it_by_no_id(model: str) -> None:
    gateway = config(auth=RULES)
    quoted = model.replace(":", "%3A").replace("/", "%2F")
    marketing = {"authorization": "Bearer team2-key"}
    status, error = refusal(await send(gateway, f"/model/{quoted}/converse", marketing, converse()))
    assert (status, error["code"]) == (403, "model_not_allowed")
    status, error = refusal(await send(gateway, f"/bedrock/{quoted}", marketing, chat("gpt-4o")))
    assert (status, error["code"]) == (403, "model_not_allowed")
    # ... and engineering, whom the rule allows, reaches it.
    let_through(
        await send(
            gateway, f"/model/{quoted}/converse", {"authorization": "Bearer team1-key"}, converse()
        )
    )


async def test_a_key_allowed_only_an_alias_reaches_no_inference_profile() -> None:
    gateway = config("      allowed_models: [haiku]\n")
    alice = {"authorization": "Bearer team1-key"}
    profile = "us.anthropic.claude-3-haiku-20240307-v1%3A0"
    status, error = refusal(await send(gateway, f"/model/{profile}/converse", alice, converse()))
    assert (status, error["code"]) == (403, "model_not_allowed")
    let_through(await send(gateway, "/model/haiku/converse", alice, converse()))


async def test_the_model_list_names_only_what_a_narrow_key_may_use() -> None:
    answers = await send(NARROW, "/v1/models", {"authorization": "Bearer team1-key"}, method="GET")
    listed = orjson.loads(answers[-1].immediate_response.body)
    assert [model["id"] for model in listed["data"]] == ["gpt-4o-mini"]


async def test_the_model_list_hides_what_an_access_rule_keeps_from_a_group() -> None:
    answers = await send(
        config(auth=RULES), "/v1/models", {"authorization": "Bearer team2-key"}, method="GET"
    )
    listed = {model["id"] for model in orjson.loads(answers[-1].immediate_response.body)["data"]}
    assert "gpt-4o-mini" in listed
    assert not listed & {"gpt-4o", "haiku", "anthropic.claude-3-haiku-20240307-v1:0"}


async def test_a_vertex_path_names_the_model_checked_not_the_body() -> None:
    path = (
        "/vertex/v1/projects/p/locations/us-east5/publishers/anthropic/models/"
        "claude-sonnet-4-0:rawPredict"
    )
    body = orjson.dumps(
        {
            "anthropic_version": "vertex-2023-10-16",
            "model": "gpt-4o-mini",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    gateway = config("      allowed_models: [gpt-4o-mini, claude-3-5-haiku-latest]\n")
    status, error = refusal(await send(gateway, path, {"authorization": "Bearer team1-key"}, body))
    assert (status, error["code"]) == (403, "model_not_allowed")


# --- where credentials are taken from, and where they go ------------------------------------


async def test_no_client_credential_reaches_the_provider() -> None:
    sent = {
        "authorization": "Bearer team1-key",
        "x-api-key": "team2-key",
        "api-key": "team2-key",
        "x-goog-api-key": "team2-key",
        "proxy-authorization": "Basic dGVhbTE6eA==",
        "cookie": "session=abc",
        "openai-organization": "org-x",
        "openai-project": "proj-x",
        "x-goog-user-project": "p",
        "x-amz-security-token": "t",
    }
    answers = await send(NARROW, "/v1/chat/completions", sent, chat("gpt-4o-mini"))
    assert removed_upstream(answers) >= set(sent)
    provider_headers = {
        h.header.key: h.header.raw_value for h in let_through(answers).header_mutation.set_headers
    }
    assert provider_headers["authorization"] == b"Bearer mock-provider-key"


@pytest.mark.parametrize(
    "query",
    [
        "key=team1-key",
        "KEY=team1-key",
        "%6Bey=team1-key",
        "api-key=team1-key",
        "api_key=team1-key",
        "apiKey=team1-key",
        "x-api-key=team1-key",
        "access_token=team1-key",
        "token=team1-key",
        "authorization=Bearer%20team1-key",
        "a=1&key",
    ],
)
async def test_a_credential_in_the_query_is_refused_beside_a_good_header(query: str) -> None:
    answers = await send(
        NARROW,
        f"/v1/chat/completions?{query}",
        {"authorization": "Bearer team1-key"},
        chat("gpt-4o-mini"),
    )
    status, error = refusal(answers)
    assert (status, error["code"]) == (400, "credential_in_query")
    assert "team1-key" not in error["message"]


async def test_a_credential_in_the_query_is_refused_on_an_anonymous_route_too() -> None:
    answers = await send(NARROW, "/v1/models?key=team1-key", {}, method="GET")
    status, error = refusal(answers)
    assert (status, error["code"]) == (400, "credential_in_query")


@pytest.mark.parametrize(
    ("headers", "who"),
    [
        ({"authorization": "Bearer team1-key", "x-api-key": "team2-key"}, "team1"),
        ({"authorization": "team2-key", "x-api-key": "team1-key"}, "team2"),
        ({"authorization": "Bearer", "x-api-key": "team2-key"}, "team2"),
        ({"x-api-key": "team1-key", "x-goog-api-key": "team2-key"}, "team1"),
        ({"api-key": "team2-key", "x-goog-api-key": "team1-key"}, "team2"),
    ],
)
async def test_several_credentials_are_judged_by_the_first(
    headers: dict[str, str], who: str
) -> None:
    log = MemoryLog()
    services = Services(metrics=GatewayMetrics(), access_log=log)
    # gpt-4o: team1 may not use it under NARROW; team2 may.
    answers = await send(NARROW, "/v1/chat/completions", headers, chat("gpt-4o"), services=services)
    if who == "team1":
        assert refusal(answers)[1]["code"] == "model_not_allowed"
    else:
        let_through(answers)
    assert log.lines()[-1]["api_key_id"] == who


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer wrong-key-123", "x-api-key": "team1-key"},
        {"authorization": "Bearer team1-key,Bearer team2-key"},
        {"x-api-key": "team1-key,team2-key"},
        {"authorization": "Bearer team1-key team2-key"},
    ],
)
async def test_a_wrong_or_doubled_credential_is_a_401_that_quotes_none(
    headers: dict[str, str],
) -> None:
    answers = await send(NARROW, "/v1/chat/completions", headers, chat("gpt-4o-mini"))
    status, error = refusal(answers)
    assert status == 401
    assert "key" not in error["message"].replace("API key", "")


async def test_gateway_identity_headers_sent_by_a_client_change_no_one() -> None:
    log = MemoryLog()
    services = Services(metrics=GatewayMetrics(), access_log=log)
    spoofed = {
        "authorization": "Bearer team2-key",
        "x-aigw-user-id": "alice",
        "x-aigw-group-id": "engineering",
        "x-aigw-api-key-id": "team1",
        "x-aigw-caller": "user:alice",
        "x-user-id": "alice",
    }
    gateway = config(auth=RULES)
    status, error = refusal(
        await send(gateway, "/v1/chat/completions", spoofed, chat("gpt-4o"), services=services)
    )
    assert (status, error["code"]) == (403, "model_not_allowed")
    line = log.lines()[-1]
    assert (line["api_key_id"], line["user_id"], line["group_id"]) == ("team2", "bob", "marketing")


# --- JWTs ---------------------------------------------------------------------------------


JWT_GATEWAY = config(auth=JWT_PROVIDER + RULES)


async def jwt_status(credential: str, model: str = "gpt-4o") -> tuple[int, dict[str, Any]]:
    answers = await send(
        JWT_GATEWAY, "/v1/chat/completions", {"authorization": f"Bearer {credential}"}, chat(model)
    )
    last = answers[-1]
    if not last.HasField("immediate_response"):
        return 200, {}
    return refusal(answers)


async def test_a_token_in_an_allowed_group_reaches_the_model_and_others_do_not() -> None:
    assert (await jwt_status(token(groups=["marketing", "engineering"])))[0] == 200
    status, error = await jwt_status(token(groups=["marketing"]))
    assert (status, error["code"]) == (403, "model_not_allowed")
    # A group that is not a string names nobody's group.
    status, _ = await jwt_status(token(groups=[["engineering"], {"engineering": 1}]))
    assert status == 403


@pytest.mark.parametrize(
    ("header", "claims", "message"),
    [
        ({"alg": "none"}, {}, "invalid token: algorithm not allowed"),
        ({"alg": "HS256"}, {"exp": None}, 'invalid token: missing claim "exp"'),
        ({"alg": "HS256"}, {"exp": 1_000_000_000}, "token expired"),
        ({"alg": "HS256"}, {"nbf": 4_000_000_000}, "token not yet valid"),
        ({"alg": "HS256"}, {"iss": ISSUER + "/"}, "invalid token: unknown issuer"),
    ],
)
async def test_a_forged_or_stale_token_is_refused(
    header: dict[str, str], claims: dict[str, Any], message: str
) -> None:
    payload = {"iss": ISSUER, "sub": "mallory", "groups": ["engineering"]}
    payload["exp"] = int(time.time()) + 600
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    if header["alg"] == "none":
        credential = jwt.encode(payload, None, "none")
    else:
        credential = jwt.encode(payload, SECRET, "HS256")
    status, error = await jwt_status(credential)
    assert (status, error["message"], error["code"]) == (401, message, "invalid_token")
    assert credential not in orjson.dumps(error).decode()


async def test_the_model_list_of_a_key_kept_to_one_route_names_that_routes_models() -> None:
    gateway = config("      allowed_routes: [openai-embeddings]\n")
    answers = await send(gateway, "/v1/models", {"authorization": "Bearer team1-key"}, method="GET")
    listed = {model["id"] for model in orjson.loads(answers[-1].immediate_response.body)["data"]}
    assert "text-embedding-3-small" in listed
    # Chat models without a `kind` may be sent to any route (the provider decides), so
    # they are listed; a model of the chat kind would not be.
    assert "text-embedding-3-large" in listed
    # ... and the route it is kept from refuses it.
    status, error = refusal(
        await send(
            gateway, "/v1/chat/completions", {"authorization": "team1-key"}, chat("gpt-4o-mini")
        )
    )
    assert (status, error["code"]) == (403, "route_not_allowed")

"""The authentication stage fed real ext_proc messages: where credentials are read from."""

from __future__ import annotations

import jwt
import orjson

from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.processor import Processor
from extproc.testing import processor_for, request_body, request_headers, run_stream

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
PARTNER_ROUTE = """
  - name: partner
    path_prefix: /partner
    auth: {methods: [api_key], api_key_header: x-partner-key}
"""


def processor() -> Processor:
    text = DEFAULT_CONFIG.read_text().replace("\nroutes:\n", "\nroutes:" + PARTNER_ROUTE, 1)
    return processor_for(parse_config(text, "gateway.yaml", {}))


async def status_for(path: str, headers: dict[str, str]) -> int:
    answers = await run_stream(
        processor(), [request_headers(path, headers=headers), request_body(BODY)]
    )
    last = answers[-1]
    return last.immediate_response.status.code if last.HasField("immediate_response") else 200


async def test_a_route_can_name_its_own_key_header_and_it_is_stripped() -> None:
    answers = await run_stream(
        processor(), [request_headers("/partner", headers={"x-partner-key": "team1-key"})]
    )
    removed = answers[0].request_headers.response.header_mutation.remove_headers
    assert "x-partner-key" in removed
    assert await status_for("/partner", {"x-partner-key": "team1-key"}) == 200


async def test_a_jwt_only_route_says_no_bearer_token_found() -> None:
    text = DEFAULT_CONFIG.read_text().replace(
        "\nroutes:\n",
        "\nroutes:\n  - name: jwt-only\n    path_prefix: /jwt\n    auth: {methods: [jwt]}\n",
        1,
    )
    provider = (
        "  jwt_providers:\n    - name: dev\n      issuer: https://dev.example.com\n"
        "      shared_secret: a-shared-secret-that-is-long-enough-000\n      algorithms: [HS256]\n"
    )
    text = text.replace("\nauth:\n", "\nauth:\n" + provider, 1)
    [answer] = await run_stream(
        processor_for(parse_config(text, "gateway.yaml", {})), [request_headers("/jwt")]
    )
    assert answer.immediate_response.status.code == 401
    error = orjson.loads(answer.immediate_response.body)["error"]
    assert error["message"] == "no bearer token found"
    # A token is what is missing, so the code is a token's, not invalid_api_key.
    assert error["code"] == "invalid_token"
    challenge = {
        h.header.key: h.header.raw_value.decode()
        for h in answer.immediate_response.headers.set_headers
    }["www-authenticate"]
    # RFC 6750: no error attribute when the request carried no credential at all.
    assert challenge == 'Bearer realm="aigw"'
    # A password sent in Basic is no token either.
    [basic] = await run_stream(
        processor_for(parse_config(text, "gateway.yaml", {})),
        [request_headers("/jwt", headers={"authorization": "Basic dXNlcjpwYXNz"})],
    )
    error = orjson.loads(basic.immediate_response.body)["error"]
    assert error["message"].startswith("no bearer token found: the Authorization header uses")
    assert error["code"] == "invalid_token"


async def test_a_route_taking_keys_keeps_the_key_code_when_nothing_is_sent() -> None:
    [answer] = await run_stream(processor(), [request_headers("/partner")])
    error = orjson.loads(answer.immediate_response.body)["error"]
    assert (answer.immediate_response.status.code, error["code"]) == (401, "invalid_api_key")


async def test_an_api_key_on_a_jwt_only_route_is_told_the_route_takes_tokens_only() -> None:
    # The workshop's JWT route: a caller with an org key gets 401 saying why, not a bare
    # "invalid token" that sends them to check a key that is good elsewhere.
    text = DEFAULT_CONFIG.read_text().replace(
        "\nroutes:\n",
        "\nroutes:\n  - name: jwt-only\n    path_prefix: /jwt\n    auth: {methods: [jwt]}\n",
        1,
    )
    provider = (
        "  jwt_providers:\n    - name: dev\n      issuer: https://dev.example.com\n"
        "      shared_secret: a-shared-secret-that-is-long-enough-000\n      algorithms: [HS256]\n"
    )
    gateway = processor_for(
        parse_config(text.replace("\nauth:\n", "\nauth:\n" + provider, 1), "gateway.yaml", {})
    )
    for headers in ({"x-api-key": "team1-key"}, {"authorization": "Bearer team1-key"}):
        [answer] = await run_stream(gateway, [request_headers("/jwt", headers=headers)])
        assert answer.immediate_response.status.code == 401
        error = orjson.loads(answer.immediate_response.body)["error"]
        assert error["code"] == "invalid_token"
        assert error["message"].startswith("invalid token: not a JWT")
        assert "accepts only JWT bearer tokens, not API keys" in error["message"]
        assert "team1-key" not in answer.immediate_response.body.decode()


async def test_credentials_are_read_from_every_supported_place() -> None:
    assert await status_for("/v1/chat/completions", {"authorization": "team1-key"}) == 200
    assert await status_for("/v1/chat/completions", {"authorization": "Bearer team1-key"}) == 200
    assert await status_for("/v1/chat/completions", {"x-api-key": "team1-key"}) == 200
    assert await status_for("/v1/chat/completions", {"api-key": "team1-key"}) == 200
    assert await status_for("/v1/chat/completions", {"authorization": "Basic dGVhbTE="}) == 401
    # The route-named header is only read on that route.
    assert await status_for("/v1/chat/completions", {"x-partner-key": "team1-key"}) == 401


async def test_a_refused_jwt_and_a_refused_key_say_which_credential_failed() -> None:
    secret = "a-shared-secret-that-is-long-enough-000"
    provider = (
        "  jwt_providers:\n    - name: dev\n      issuer: https://dev.example.com\n"
        f"      shared_secret: {secret}\n      algorithms: [HS256]\n"
    )
    text = DEFAULT_CONFIG.read_text().replace("\nauth:\n", "\nauth:\n" + provider, 1)
    gateway = processor_for(parse_config(text, "gateway.yaml", {}))
    expired = jwt.encode(
        {"iss": "https://dev.example.com", "sub": "alice", "exp": 1_000_000_000}, secret, "HS256"
    )

    async def refusal(credential: str) -> dict[str, str]:
        headers = {"authorization": f"Bearer {credential}"}
        [answer] = await run_stream(
            gateway, [request_headers("/v1/chat/completions", headers=headers)]
        )
        assert answer.immediate_response.status.code == 401
        error: dict[str, str] = orjson.loads(answer.immediate_response.body)["error"]
        return error

    token_error = await refusal(expired)
    assert token_error["message"] == "token expired"
    assert token_error["code"] == "invalid_token"
    assert (await refusal("no-such-key"))["code"] == "invalid_api_key"


async def refusal_of(headers: dict[str, str], path: str = "/v1/chat/completions") -> bytes:
    [answer] = await run_stream(processor(), [request_headers(path, headers=headers)])
    assert answer.immediate_response.status.code == 401
    body: bytes = answer.immediate_response.body
    return body


BASIC = "Basic dGVhbTE6dGVhbTEta2V5"  # team1:team1-key


async def test_basic_authentication_is_refused_by_name_and_where_the_key_goes_said() -> None:
    """curl -u, or a base URL with user:key@ in it: the client read "no API key found"
    and was left to wonder why the key it sent was not one."""
    body = await refusal_of({"authorization": BASIC})
    error = orjson.loads(body)["error"]
    assert error["message"] == (
        "no API key found: the Authorization header uses the Basic scheme, which is not "
        "accepted; send the API key as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
    )
    assert error["type"] == "authentication_error"
    assert b"dGVhbTE6dGVhbTEta2V5" not in body and b"team1-key" not in body


async def test_an_anthropic_client_with_basic_authentication_reads_it_in_anthropics_shape() -> None:
    body = await refusal_of(
        {"authorization": BASIC, "anthropic-version": "2023-06-01"}, "/v1/messages"
    )
    error = orjson.loads(body)
    assert error["type"] == "error" and error["error"]["type"] == "authentication_error"
    assert "the Basic scheme, which is not accepted" in error["error"]["message"]


async def test_an_unregistered_scheme_is_not_repeated_it_may_be_part_of_a_key() -> None:
    body = await refusal_of({"authorization": "sk-live-12345 rest-of-it"})
    message = orjson.loads(body)["error"]["message"]
    assert "a scheme other than Bearer, which is not accepted" in message
    assert b"sk-live" not in body and b"rest-of-it" not in body


async def test_basic_beside_an_x_api_key_leaves_the_key_to_decide() -> None:
    assert (
        await status_for("/v1/chat/completions", {"authorization": BASIC, "x-api-key": "team1-key"})
        == 200
    )

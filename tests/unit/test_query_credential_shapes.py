"""A credential under an innocent query name is refused before any provider.

The gateway refused a credential in the query under the names that say so (``?key=``,
``?api-key=``) and its own key under any name, but ``?x=sk-...`` (any other key or token,
under a name the gateway cannot know) went on to the provider with the query, into its
logs. A value shaped as a well-known credential is now refused under any name: a 400
``credential_in_query`` in the client API's shape, naming the parameter and the kind,
never the value. The parameters the served APIs use still pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.auth import credential_shapes
from tests.unit.test_gemini_guard_flow import STREAM, gateway, refusal, user, vertex
from tests.unit.test_query_secrets import CHAT, MESSAGES, send, sent_to_a_provider

__all__ = ["vertex"]  # the fixture, for pytest

# Shaped as each kind is; none is a live credential.
OPENAI = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 2
ANTHROPIC = "sk-ant-api03-" + "Zy9xWv8uTs7rQp6oNm5lKj4iHg3fEd2cBa1" * 2 + "-AA"
AWS = "AKIAIOSFODNN7EXAMPLE"
GOOGLE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"[:35]
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2
SLACK = "xoxb-123456789012-1234567890123-" + "AbCdEfGhIjKlMnOpQrStUvWx"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
GOOGLE_TOKEN = "ya29.a0AfB_byC" + "d3Ef4Gh5Ij6Kl7Mn8" * 2
DEEPSEEK = "sk-" + "3f9c0a7e5b1d" * 2 + "8e2a4c6d"  # 32 hex digits: no capital
# A key `extproc keys create` made: `aigw-` and 43 base64url characters.
GATEWAY_KEY = "aigw-" + "Qg2vYnIOzwGk0m-Z22a4mmq6IY_UejdPVcePuhOFRE8"
BASE36 = "sk-" + "q7vk2mzr9xw4tj8hpn3c" * 2 + "b6dy1gsl"  # 48 small letters and digits


def refused(answers: list[Any]) -> tuple[int, dict[str, Any]]:
    assert not sent_to_a_provider(answers), "the credential went on to a provider"
    refusal = answers[-1].immediate_response
    return refusal.status.code, orjson.loads(refusal.body)


@pytest.mark.parametrize(
    ("query", "secret", "kind"),
    [
        (f"x={OPENAI}", OPENAI, "an OpenAI or Anthropic API key"),
        (f"api-version=2024-10-21&x={ANTHROPIC}", ANTHROPIC, "an OpenAI or Anthropic API key"),
        (f"x={AWS}", AWS, "an AWS access key id"),
        (f"x={GOOGLE}", GOOGLE, "a Google API key"),
        (f"x={GOOGLE_TOKEN}", GOOGLE_TOKEN, "a Google access token"),
        (f"x={GITHUB}", GITHUB, "a GitHub token"),
        (f"x={SLACK}", SLACK, "a Slack token"),
        (f"x={JWT}", JWT, "a JSON Web Token"),
        (f"x={DEEPSEEK}", DEEPSEEK, "an OpenAI or Anthropic API key"),
        (f"x={GATEWAY_KEY}", GATEWAY_KEY, "an API key of this gateway"),
        (f"x={BASE36}", BASE36, "an OpenAI or Anthropic API key"),
        # Inside a longer value, percent-encoded, after a `;`.
        (f"x=Bearer+{OPENAI}", OPENAI, "an OpenAI or Anthropic API key"),
        ("x=" + OPENAI.replace("-", "%2D"), OPENAI, "an OpenAI or Anthropic API key"),
        (f"a=1;x={AWS}", AWS, "an AWS access key id"),
    ],
    ids=["openai", "anthropic", "aws", "google", "google-token", "github", "slack", "jwt",
         "deepseek", "gateway-key", "base36", "bearer", "percent-encoded", "semicolon"],
)  # fmt: skip
async def test_a_credential_under_an_innocent_name_is_refused_naming_the_parameter(
    query: str, secret: str, kind: str
) -> None:
    answers, log = await send(f"/v1/chat/completions?{query}", CHAT)
    status, body = refused(answers)
    assert status == 400
    error = body["error"]
    assert error["code"] == "credential_in_query" and error["param"] == "x"
    assert f"parameter 'x' holds what looks like {kind}" in error["message"]
    assert secret not in orjson.dumps(body).decode()
    [line] = log.lines()
    assert secret not in orjson.dumps(line).decode()


async def test_a_credential_as_the_parameters_name_is_refused_without_naming_it() -> None:
    answers, log = await send(f"/v1/chat/completions?{OPENAI}", CHAT)
    status, body = refused(answers)
    assert status == 400 and body["error"]["param"] is None
    assert "a parameter holds what looks like an OpenAI" in body["error"]["message"]
    assert OPENAI not in orjson.dumps(body).decode()
    assert OPENAI not in orjson.dumps(log.lines()).decode()


async def test_the_routes_model_parameter_is_read_for_credentials_too() -> None:
    # /openai reads its model from ?model=: the query goes on to the provider all the same.
    answers, _ = await send(f"/openai?model={OPENAI}", CHAT)
    assert refused(answers)[0] == 400


async def test_an_anthropic_client_gets_the_refusal_in_anthropics_shape() -> None:
    answers, _ = await send(f"/v1/messages?beta=true&x={GITHUB}", MESSAGES)
    status, body = refused(answers)
    assert status == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "parameter 'x'" in body["error"]["message"] and GITHUB not in str(body)


async def test_a_gemini_client_gets_the_refusal_in_googles_shape(vertex: tuple[str, Path]) -> None:
    async with gateway(vertex, {}) as gw:
        answers = await gw.send(f"{STREAM}&x={AWS}", user("hi"))
        status, body = refusal(answers[-1])
        assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
        assert "parameter 'x'" in body["error"]["message"] and AWS not in str(body)
        # Gemini's own `alt=sse` goes on.
        answers = await gw.send(STREAM, user("hi"))
        assert not answers[-1].HasField("immediate_response")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions?api-version=2024-10-21", CHAT),  # Azure OpenAI's
        ("/openai?model=gpt-4o-mini", CHAT),  # a route's model parameter
        ("/v1/messages?beta=true", MESSAGES),  # the Anthropic SDK's beta calls
        # Cursors and ids: a base64 JSON cursor has no dots; ids are no key's shape.
        ("/v1/chat/completions?after=eyJpZCI6MTIzfQ&limit=20&order=desc", CHAT),
        ("/v1/chat/completions?after_id=claude-3-5-haiku-20241022&before_id=msg_01A", CHAT),
        ("/v1/chat/completions?include%5B%5D=file_search_call.results", CHAT),
        # Words that begin as a key does, joined by hyphens, and a key's prefix alone.
        ("/v1/chat/completions?q=sk-learn-pipelines-and-gradient-boosting-docs", CHAT),
        ("/v1/chat/completions?ref=sk-Learn-1-4-Release-Highlights-and-Notes", CHAT),
        ("/v1/chat/completions?q=task-1234567890-abcdefghij-klmnopqrstu-vwxyz", CHAT),
        ("/v1/chat/completions?q=sk-&tag=AKIA&t=eyJ.eyJ.x", CHAT),
        ("/v1/chat/completions?arn=arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3A"
         "inference-profile%2Fus.anthropic.claude-3-5-haiku-20241022-v1%3A0", CHAT),
    ],
)  # fmt: skip
async def test_the_parameters_of_the_served_apis_go_on(path: str, body: bytes) -> None:
    answers, _ = await send(path, body)
    assert sent_to_a_provider(answers)


@pytest.mark.parametrize(
    "text",
    [
        "2024-10-21",
        "sse",
        "gpt-4o-mini",
        "anthropic.claude-3-haiku-20240307-v1:0",
        "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
        "sk-" + "a" * 40,  # no digit, no capital: no random key
        "AKIAIOSFODNN7EXAMPLEX",  # one character too many for a key id
        "xoxb-not-a-real-token-here",  # no team or user number
        "mask-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",  # "sk-" inside a word
    ],
)
def test_text_that_is_no_credential_has_no_kind(text: str) -> None:
    assert credential_shapes.kind(text) is None

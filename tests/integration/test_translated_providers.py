"""OpenAI clients reaching Anthropic and Bedrock through the gateway, translated both ways.

The mock speaks each provider's real wire format (Anthropic SSE, Bedrock's
binary event stream, SigV4 checked with botocore); usage must come out exactly
as the mock reported it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.mock_llm import count_tokens
from extproc.mock_llm.web_search import PAGE
from tests.integration.conftest import GatewayLog, metric, mock_requests, running_stack, scrape

KEY = "team1-key"
PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Translate me"}]
REPLY = "Mock reply to: Translate me"
# The mock's rule: words and punctuation per message + 4 each, + 2 per request.
PROMPT_TOKENS = sum(count_tokens(m["content"]) + 4 for m in PROMPT) + 2


def client(stack: LocalStack, prefix: str) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{prefix}", api_key=KEY, max_retries=0)


def last_upstream(stack: LocalStack) -> dict[str, Any]:
    return mock_requests(stack)[-1]


CASES = [
    # (route prefix for the SDK's base_url, model, upstream path the mock saw, provider)
    ("/anthropic", "claude-3-5-haiku-latest", "/v1/messages", "mock-anthropic"),
    ("/v1", "claude-3-7-sonnet-latest", "/v1/messages", "mock-anthropic"),  # by prefix
    (
        "/bedrock/haiku",
        "ignored-by-path",
        "/model/anthropic.claude-3-haiku-20240307-v1:0/converse",
        "mock-bedrock",
    ),
    (
        "/bedrock/llama",
        "ignored-by-path",
        "/model/meta.llama3-8b-instruct-v1:0/converse",
        "mock-bedrock",
    ),
]


@pytest.mark.parametrize(("prefix", "model", "path", "provider"), CASES)
def test_completions_are_translated_and_counted(
    stack: LocalStack, gateway_log: GatewayLog, prefix: str, model: str, path: str, provider: str
) -> None:
    # `/bedrock/haiku` is a route prefix, so the SDK posts to /bedrock/haiku/chat/completions.
    raw = client(stack, prefix).chat.completions.with_raw_response.create(
        model=model,
        messages=PROMPT,  # type: ignore[arg-type]
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == REPLY
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == PROMPT_TOKENS
    assert reply.usage.completion_tokens == count_tokens(REPLY)
    upstream = last_upstream(stack)
    # The mock records the decoded path; the wire had `%3A` (SigV4 verified it).
    assert upstream["path"] == path
    assert KEY not in orjson.dumps(upstream).decode()
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["provider"] == provider
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )


@pytest.mark.parametrize(("prefix", "model", "path", "provider"), CASES[:1] + CASES[2:3])
@pytest.mark.parametrize("include_usage", [True, False])
def test_streams_are_translated_and_counted(
    stack: LocalStack,
    gateway_log: GatewayLog,
    prefix: str,
    model: str,
    path: str,
    provider: str,
    include_usage: bool,
) -> None:
    before = scrape(stack.metrics_url)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    with client(stack, prefix).chat.completions.with_streaming_response.create(
        model=model,
        messages=PROMPT,
        stream=True,
        **options,  # type: ignore[arg-type]
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert [c.usage.completion_tokens for c in usage_chunks] == [count_tokens(REPLY)]  # type: ignore[union-attr]
    else:
        assert usage_chunks == []
    assert last_upstream(stack)["path"] == path.replace("/converse", "/converse-stream")
    [line] = gateway_log.for_request(request_id)
    assert line["stream"] is True and line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        PROMPT_TOKENS,
        count_tokens(REPLY),
    )
    after = scrape(stack.metrics_url)
    grown = metric(
        after, "tokens_consumed_total", provider=provider, token_type="completion"
    ) - metric(before, "tokens_consumed_total", provider=provider, token_type="completion")
    assert grown == count_tokens(REPLY)


def test_bedrock_catch_all_takes_any_model_id(stack: LocalStack) -> None:
    reply = client(stack, "/bedrock/mistral.mistral-large-2402-v1:0").chat.completions.create(
        model="x",
        messages=PROMPT,  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == REPLY
    assert last_upstream(stack)["path"] == "/model/mistral.mistral-large-2402-v1:0/converse"


@pytest.mark.parametrize(
    ("prefix", "model", "fault", "error"),
    [
        ("/anthropic", "claude-3-5-haiku-latest", "status=529", openai.InternalServerError),
        ("/anthropic", "claude-3-5-haiku-latest", "status=429", openai.RateLimitError),
        ("/bedrock/titan", "x", "status=429", openai.RateLimitError),
        ("/bedrock/titan", "x", "status=400", openai.BadRequestError),
    ],
)
def test_provider_errors_arrive_in_openai_shape(
    stack: LocalStack, prefix: str, model: str, fault: str, error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        client(stack, prefix).chat.completions.create(
            model=model,
            messages=PROMPT,
            extra_headers={"x-mock-fault": fault},  # type: ignore[arg-type]
        )
    body = caught.value.body  # type: ignore[attr-defined]
    assert isinstance(body, dict) and body["message"]
    if fault == "status=529":
        assert caught.value.status_code == 503  # type: ignore[attr-defined]


SIGNING_PROVIDERS = """
  - name: bedrock-wrong-secret
    type: bedrock
    base_url: http://${MOCK_LLM_ADDRESS}
    aws: {region: us-east-1, access_key_id: AKIDMOCK, secret_access_key: not-the-secret}
  - name: bedrock-with-session
    type: bedrock
    base_url: http://${MOCK_LLM_ADDRESS}
    aws:
      region: us-east-1
      access_key_id: AKIDMOCK
      secret_access_key: mock-secret-key
      session_token: session-token-for-the-test
"""
SIGNING_ROUTES = """
  - {name: wrong-secret, path_prefix: /wrong, model_from_path: true,
     provider: bedrock-wrong-secret}
  - {name: with-session, path_prefix: /session, model_from_path: true,
     provider: bedrock-with-session}
"""


@pytest.fixture(scope="module")
def signing_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("signing")
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:" + SIGNING_PROVIDERS, 1)
    text = text.replace("\nroutes:\n", "\nroutes:" + SIGNING_ROUTES, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text)
    with running_stack(workdir, config) as running:
        yield running


def test_a_wrong_aws_secret_is_refused_by_the_provider(signing_stack: LocalStack) -> None:
    response = httpx.post(
        f"{signing_stack.base_url}/wrong/amazon.nova-micro-v1:0",
        content=orjson.dumps({"messages": PROMPT}),
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    # The mock answered 403 InvalidSignatureException; the client learns the
    # provider refused the gateway's credentials, not its own.
    assert response.status_code == 502
    assert "credential" in response.json()["error"]["message"]
    assert "not-the-secret" not in response.text


def test_session_tokens_are_sent_when_configured(signing_stack: LocalStack) -> None:
    response = httpx.post(
        f"{signing_stack.base_url}/session/amazon.nova-micro-v1:0",
        content=orjson.dumps({"messages": PROMPT}),
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    upstream = last_upstream(signing_stack)
    assert upstream["headers"]["x-amz-security-token"] == "session-token-for-the-test"
    assert "x-amz-security-token" in upstream["headers"]["authorization"].lower()


# --- fields beyond the conversation (docs/providers.md) ---------------------------------------

DOCUMENTS = [{"title": "Visitor guide", "text": "The Louvre opens at 9am."}]
PARIS = {"type": "approximate", "approximate": {"city": "Paris", "country": "FR"}}


def test_web_search_and_documents_reach_claude_and_audio_is_refused(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    # Before, all three were dropped: Claude answered from memory, without the documents,
    # in text to a client that asked for speech, billed as if that was what it asked for.
    claude = client(stack, "/anthropic")
    reply = claude.chat.completions.create(
        model="claude-3-5-haiku-latest",
        messages=PROMPT,  # type: ignore[arg-type]
        web_search_options={"search_context_size": "low", "user_location": PARIS},  # type: ignore[typeddict-item]
        extra_body={"documents": DOCUMENTS},
    )
    assert reply.choices[0].message.content == REPLY
    sent = last_upstream(stack)["json"]
    assert sent["tools"] == [
        {
            "type": "web_search_20250305",
            "name": "web_search",
            "user_location": {"type": "approximate", "city": "Paris", "country": "FR"},
        }
    ]
    assert sent["messages"][0]["content"][0] == {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": DOCUMENTS[0]["text"]},
        "title": "Visitor guide",
    }
    upstream_calls = len(mock_requests(stack))
    with pytest.raises(openai.BadRequestError) as refused:
        claude.chat.completions.create(
            model="claude-3-5-haiku-latest",
            messages=PROMPT,  # type: ignore[arg-type]
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"},
        )
    assert refused.value.param == "modalities"
    assert refused.value.type == "invalid_request_error"
    assert len(mock_requests(stack)) == upstream_calls  # never sent
    [line] = gateway_log.for_request(refused.value.response.headers["x-request-id"])
    assert (line["http_status_code"], line["total_tokens"]) == (400, 0)


def test_a_streamed_search_answer_shows_the_pages_claude_cited(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    # Before, a stream carried Claude's text and none of the pages it cited, which the same
    # question unstreamed showed as message.annotations; now both show the same sources.
    claude = client(stack, "/anthropic")
    asked: dict[str, Any] = {
        "model": "claude-3-5-haiku-latest",
        "messages": PROMPT,
        "web_search_options": {},
    }
    whole = claude.chat.completions.create(**asked).choices[0].message
    with claude.chat.completions.stream(**asked) as events:
        streamed = events.get_final_completion().choices[0].message
    assert streamed.content == whole.content == REPLY
    assert whole.annotations and streamed.annotations == whole.annotations
    [cited] = [annotation.url_citation for annotation in streamed.annotations]
    assert (cited.url, cited.title) == (PAGE.url, PAGE.title)
    # The mock's Claude cites the page in all but the answer's first piece of text.
    assert REPLY[cited.start_index : cited.end_index] == " reply to: Translate me"

    chunks = list(claude.chat.completions.create(**asked, stream=True))
    carrying = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.model_extra]
    assert [chunk.choices[0].delta.model_extra for chunk in carrying] == [
        {"annotations": [annotation.model_dump() for annotation in whole.annotations]}
    ]
    [line] = gateway_log.for_request(chunks[0].id.removeprefix("chatcmpl-"))
    assert line["server_tool_requests"] == {"web_search": 1}

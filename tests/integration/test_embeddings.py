"""OpenAI embeddings through the gateway: the official openai client, real Envoy, the
gateway, embedded Valkey and the mock provider. An embedding is billed by its prompt
tokens alone, and every ledger (the answer, the log line, the metrics, the usage
rollups and the quota) must agree on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.mock_llm import count_tokens
from extproc.mock_llm.embeddings_api import embedding_vector, text_key
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    metric,
    mock_requests,
    running_stack,
    scrape,
    wait_for,
    write_config,
)
from tests.integration.test_openai_flow import usage_report

CLIENT_KEY = "team1-key"
MODEL = "text-embedding-3-small"
ROUTE = "openai-embeddings"


def client_of(stack: LocalStack, key: str = CLIENT_KEY) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)


def embedding_requests(stack: LocalStack) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in mock_requests(stack) if r["path"].endswith("/embeddings")]


def prompt_tokens(samples: dict, model: str = MODEL) -> float:  # type: ignore[type-arg]
    return metric(samples, "tokens_consumed_total", model=model, token_type="prompt")


def test_an_embeddings_call_is_answered_billed_by_its_prompt_and_reported(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    texts = ["Hello gateway, embed me.", "A second text, somewhat longer than the first."]
    before = scrape(stack.metrics_url)
    report_before = usage_report(stack).get((ROUTE, MODEL), {})

    # The SDK asks for base64 and decodes it: the vectors went through unchanged.
    raw = client_of(stack).embeddings.with_raw_response.create(model=MODEL, input=texts)
    answer = raw.parse()

    assert [item.index for item in answer.data] == [0, 1]
    assert all(len(item.embedding) == 1536 for item in answer.data)
    expected = sum(count_tokens(text) for text in texts)
    assert answer.usage.prompt_tokens == expected

    upstream = embedding_requests(stack)[-1]
    assert upstream["path"] == "/v1/embeddings"
    assert upstream["headers"]["authorization"] == "Bearer mock-provider-key"
    assert CLIENT_KEY not in orjson.dumps(upstream).decode()

    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["route"] == ROUTE and line["model"] == MODEL
    assert line["http_status_code"] == 200 and line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (expected, 0)
    assert line["total_tokens"] == expected and line["usage_reported"] is True
    assert line["cost_usd"] == pytest.approx(expected * 0.02 / 1_000_000)
    assert (line["api_key_id"], line["user_id"], line["group_id"]) == (
        "team1",
        "alice",
        "engineering",
    )

    after = scrape(stack.metrics_url)
    assert prompt_tokens(after) - prompt_tokens(before) == expected
    completion = {"model": MODEL, "token_type": "completion"}
    grown = metric(after, "tokens_consumed_total", **completion) - metric(
        before, "tokens_consumed_total", **completion
    )
    assert grown == 0

    row = wait_for(
        lambda: (
            found
            if (found := usage_report(stack).get((ROUTE, MODEL), {})).get("requests", 0)
            > report_before.get("requests", 0)
            else None
        )
    )
    assert row["requests"] - report_before.get("requests", 0) == 1
    assert row["prompt_tokens"] - report_before.get("prompt_tokens", 0) == expected
    assert row["completion_tokens"] == report_before.get("completion_tokens", 0)


def test_float_vectors_of_a_chosen_dimension_come_back_as_asked(stack: LocalStack) -> None:
    answer = client_of(stack).embeddings.create(
        model="text-embedding-3-large", input="shorter please", dimensions=256,
        encoding_format="float",
    )  # fmt: skip
    assert len(answer.data) == 1 and len(answer.data[0].embedding) == 256
    assert answer.usage.prompt_tokens == count_tokens("shorter please")


def test_token_id_input_is_billed_as_the_provider_counts_it(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    raw = client_of(stack).embeddings.with_raw_response.create(
        model=MODEL, input=[[101, 2023, 2003], [102, 7]]
    )
    assert raw.parse().usage.prompt_tokens == 5
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["prompt_tokens"], line["total_tokens"]) == (5, 5)


@pytest.mark.parametrize(
    ("base_path", "route"),
    [("/openai/v1", "openai-prefix-embeddings"), ("/openai", "openai-bare-prefix-embeddings")],
)
def test_an_sdk_based_at_the_openai_prefix_reaches_embeddings_too(
    stack: LocalStack, gateway_log: GatewayLog, base_path: str, route: str
) -> None:
    client = OpenAI(base_url=f"{stack.base_url}{base_path}", api_key=CLIENT_KEY, max_retries=0)
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="prefixed")
    assert raw.parse().usage.prompt_tokens == count_tokens("prefixed")
    assert embedding_requests(stack)[-1]["path"] == "/v1/embeddings"
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["route"] == route


def test_a_bad_input_is_a_400_that_never_reaches_the_provider(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    sent_before = len(embedding_requests(stack))
    with pytest.raises(openai.BadRequestError) as refused:
        client_of(stack).embeddings.create(model=MODEL, input=["fine", ""])
    assert refused.value.status_code == 400
    body = refused.value.body
    assert isinstance(body, dict) and body["param"] == "input[1]"
    assert len(embedding_requests(stack)) == sent_before
    [line] = gateway_log.for_request(refused.value.response.headers["x-request-id"])
    assert line["http_status_code"] == 400 and line["total_tokens"] == 0


def test_a_model_of_a_provider_without_embeddings_is_a_400(stack: LocalStack) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client_of(stack).embeddings.create(model="claude-3-5-haiku-latest", input="hi")
    assert refused.value.code == "unsupported_model_for_route"


def test_a_provider_error_reaches_the_client_and_charges_nothing(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    with pytest.raises(openai.InternalServerError) as failed:
        client_of(stack).embeddings.create(
            model=MODEL, input="hi", extra_headers={"x-mock-fault": "status=500"}
        )
    [line] = gateway_log.for_request(failed.value.response.headers["x-request-id"])
    assert line["http_status_code"] == 500 and line["upstream_status_code"] == 500
    assert line["total_tokens"] == 0 and line["cost_usd"] == 0


def test_titan_on_bedrock_answers_the_openai_client_and_bills_its_count(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    text = "Embed this on Bedrock, please."
    raw = client_of(stack).embeddings.with_raw_response.create(model="titan-embed", input=text)
    answer = raw.parse()  # base64 asked for and decoded by the SDK
    assert len(answer.data) == 1 and len(answer.data[0].embedding) == 1024
    assert answer.model == "titan-embed"
    assert answer.usage.prompt_tokens == count_tokens(text)

    upstream = mock_requests(stack)[-1]
    assert upstream["path"] == "/model/amazon.titan-embed-text-v2:0/invoke"  # as decoded
    assert upstream["headers"]["authorization"].startswith("AWS4-HMAC-SHA256")
    assert upstream["json"] == {"inputText": text}

    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["provider"], line["model"]) == ("mock-bedrock", "titan-embed")
    assert (line["prompt_tokens"], line["completion_tokens"]) == (count_tokens(text), 0)

    floats = client_of(stack).embeddings.create(
        model="titan-embed", input=[text], dimensions=256, encoding_format="float"
    )
    assert len(floats.data[0].embedding) == 256


def test_titan_refuses_what_it_cannot_take_with_a_400(stack: LocalStack) -> None:
    with pytest.raises(openai.BadRequestError) as batch:
        client_of(stack).embeddings.create(model="titan-embed", input=["one", "two"])
    assert batch.value.code == "unsupported_input"
    # Bedrock's own refusal (a size Titan v2 does not offer), in OpenAI's shape.
    with pytest.raises(openai.BadRequestError) as size:
        client_of(stack).embeddings.create(model="titan-embed", input="x", dimensions=300)
    assert size.value.status_code == 400


def test_cohere_on_bedrock_embeds_a_batch_for_the_openai_client_and_bills_bedrocks_count(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    texts = ["Embed this batch on Bedrock.", "Cohere takes up to 96 texts in one call."]
    tokens = sum(count_tokens(text) for text in texts)
    # The mock's Cohere vectors: deterministic, 1024 float32 numbers per text.
    expected = [embedding_vector(text_key(text), 1024).tolist() for text in texts]

    raw = client_of(stack).embeddings.with_raw_response.create(model="cohere-embed", input=texts)
    answer = raw.parse()  # base64 asked for and decoded by the SDK
    assert [item.index for item in answer.data] == [0, 1]
    assert [item.embedding for item in answer.data] == expected
    assert answer.model == "cohere-embed"
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (tokens, tokens)

    # One InvokeModel call in Cohere's body, signed (the mock verified the signature).
    upstream = mock_requests(stack)[-1]
    assert upstream["path"] == "/model/cohere.embed-english-v3/invoke"
    assert upstream["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
    assert upstream["json"] == {
        "texts": texts,
        "input_type": "search_document",
        "embedding_types": ["float"],
    }

    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["provider"], line["model"], line["route"]) == (
        "mock-bedrock",
        "cohere-embed",
        ROUTE,
    )
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (
        tokens,
        0,
        tokens,
    )
    assert line["usage_reported"] is True
    # Bedrock's list price for Cohere Embed 3 English: $0.10 per million input tokens.
    assert line["cost_usd"] == pytest.approx(tokens * 0.10 / 1_000_000)

    # Floats, and a query embedded as one (the openai SDK's extra_body).
    raw_floats = client_of(stack).embeddings.with_raw_response.create(
        model="cohere-embed",
        input=texts[0],
        encoding_format="float",
        extra_body={"input_type": "search_query"},
    )
    floats = raw_floats.parse()
    assert [item.embedding for item in floats.data] == expected[:1]
    assert floats.usage.prompt_tokens == count_tokens(texts[0])
    assert mock_requests(stack)[-1]["json"]["input_type"] == "search_query"
    [line] = gateway_log.for_request(raw_floats.headers["x-request-id"])
    assert line["prompt_tokens"] == count_tokens(texts[0])


def test_cohere_refuses_what_it_cannot_take_with_a_400_before_bedrock(stack: LocalStack) -> None:
    sent_before = len(mock_requests(stack))
    with pytest.raises(openai.BadRequestError) as batch:
        client_of(stack).embeddings.create(model="cohere-embed", input=["text"] * 97)
    assert (batch.value.code, batch.value.param) == ("unsupported_input", "input")
    with pytest.raises(openai.BadRequestError) as input_type:
        client_of(stack).embeddings.create(
            model="cohere-embed", input="x", extra_body={"input_type": "document"}
        )
    assert input_type.value.param == "input_type"
    assert len(mock_requests(stack)) == sent_before


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The default config with a 20-token budget for team2's embeddings. A lifetime
    quota, not tokens_per_hour: a run crossing the hour between two calls would give
    the third a fresh window. (The third call admitted under load was the gateway's:
    tests/unit/test_quota_crossing_reservation.py.)"""
    raw = default_config()
    raw["quotas"] = {
        "rules": [
            {
                "name": "team2-embeddings",
                "subject": "api_key",
                "match": ["team2"],
                "models": [MODEL],
                "token_quota": {"limit": 20, "period": "lifetime"},
            }
        ]
    }
    workdir = Path(tmp_path_factory.mktemp("embeddings-quota"))
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def test_a_token_budget_settles_on_the_providers_count_and_then_refuses(
    quota_stack: LocalStack,
) -> None:
    client = client_of(quota_stack, "team2-key")
    text = "one two three four five six seven eight nine ten eleven twelve"
    assert count_tokens(text) == 12
    # 12 tokens settled, 8 left: the second call is admitted (a window refuses only
    # when nothing remains) and settles at 12 too; then nothing is left.
    for _ in range(2):
        assert client.embeddings.create(model=MODEL, input=text).usage.prompt_tokens == 12

    def spent() -> openai.RateLimitError | None:
        with pytest.raises(openai.RateLimitError) as refused:
            client.embeddings.create(model=MODEL, input=text)
        # Until the second call's settlement lands, its tokens are held (a short wait).
        return refused.value if refused.value.code == "insufficient_quota" else None

    error = wait_for(spent)
    assert error is not None and "team2-embeddings" in error.message
    assert len(embedding_requests(quota_stack)) == 2
    # Another key's embeddings and team2's chat are not under the rule.
    client_of(quota_stack).embeddings.create(model=MODEL, input=text)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])


def test_a_bedrock_embedding_its_client_left_before_its_body_is_billed_bedrocks_count(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """Bedrock's input count header came before the body, which the mock holds back
    past the client's timeout: that count is the bill, exact, not the input's estimate
    (one token per four characters: five here, for the mock's twelve)."""
    texts = ["a b c d e f g h i j k l"]
    tokens = sum(count_tokens(text) for text in texts)
    impatient = OpenAI(
        base_url=f"{stack.base_url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=1.5
    )
    aborted = len([each for each in gateway_log.lines() if each["outcome"] == "aborted"])
    with pytest.raises(openai.APITimeoutError):
        impatient.embeddings.create(
            model="cohere-embed", input=texts, extra_headers={"x-mock-fault": "hold_body=4"}
        )

    def left() -> list[dict[str, object]]:
        return [each for each in gateway_log.lines() if each["outcome"] == "aborted"][aborted:]

    [line] = wait_for(left)
    assert (line["model"], line["upstream_status_code"]) == ("cohere-embed", 200)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (tokens, 0)
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)

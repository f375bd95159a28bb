"""OpenAI's Responses API through the gateway: the official openai client's
``responses.create``, plain and streamed, ``responses.compact`` and
``responses.input_tokens.count``, real Envoy, the gateway, embedded Valkey and the mock
provider. A response or a compaction is billed like a chat completion, and every ledger
(the answer, the log line, the metrics, the usage rollup and the quota) must agree on it;
a token count is billed nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.management.client import QuotaClient
from extproc.mock_llm import count_tokens
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    envoy_stat,
    metric,
    mock_requests,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
    write_config,
)

MODEL = "gpt-4.1-nano"
ROUTE = "openai-responses"
# This module's own keys, so its counters, rollups and quota are its alone; the ledger
# test has one to itself, so that no other request lands in its rollup.
KEY_ID = "responses"
KEY = "responses-key-5e21"
LEDGER_ID = "responses-ledger"
LEDGER_KEY = "responses-ledger-key-0c9a"
# The compaction's own, for the same reason.
COMPACT_ID = "responses-compact"
COMPACT_KEY = "responses-compact-key-7d3f"
# Another person, who must not continue the responses the others created.
OTHER_ID = "responses-other"
OTHER_KEY = "responses-other-key-41b8"
# The stored-response test's own, so that its quota counter is its alone.
STORED_ID = "responses-stored"
STORED_KEY = "responses-stored-key-93ce"
INSTRUCTIONS = "Be brief."
QUESTION = "Tell me a short story about a lighthouse"
# The mock's count: each message's words and punctuation + 4, + 2 per request.
INPUT_TOKENS = count_tokens(INSTRUCTIONS) + 4 + count_tokens(QUESTION) + 4 + 2
REPLY = f"Mock reply to: {QUESTION}"
OUTPUT_TOKENS = count_tokens(REPLY)
# A request-only guard: answers are not guarded, so the route still streams.
CARD_TALK = {
    "name": "no-cards",
    "request": [
        {
            "name": "card-talk",
            "patterns": ["credit card"],
            "case_insensitive": True,
            "message": "Not about credit cards.",
        }
    ],
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    raw = default_config()
    raw["auth"]["api_keys"].append({"id": KEY_ID, "key": KEY, "user_id": "rosa"})
    raw["auth"]["api_keys"].append({"id": LEDGER_ID, "key": LEDGER_KEY, "user_id": "lena"})
    raw["auth"]["api_keys"].append({"id": COMPACT_ID, "key": COMPACT_KEY, "user_id": "cora"})
    raw["auth"]["api_keys"].append({"id": OTHER_ID, "key": OTHER_KEY, "user_id": "otto"})
    raw["auth"]["api_keys"].append({"id": STORED_ID, "key": STORED_KEY, "user_id": "sara"})
    raw["quotas"] = {
        "rules": [
            {
                "name": "responses-tokens",
                "subject": "api_key",
                "match": [KEY_ID, LEDGER_ID, COMPACT_ID, STORED_ID],
                "tokens_per_day": 100_000_000,
            }
        ]
    }
    raw["guardrails"] = {"policies": [CARD_TALK]}
    for route in raw["routes"]:
        if route["name"] == ROUTE:
            route["guardrails"] = CARD_TALK["name"]
    workdir = Path(tmp_path_factory.mktemp("responses"))
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


@pytest.fixture
def gateway_log(stack: LocalStack) -> GatewayLog:
    return GatewayLog(stack.gateway_log)


def client_of(stack: LocalStack, base: str = "/v1", key: str = KEY) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{base}", api_key=key, max_retries=0)


def responses_requests(stack: LocalStack) -> list[dict[str, Any]]:
    return [r for r in mock_requests(stack) if r["path"].endswith("/responses")]


def tokens_used(stack: LocalStack, key_id: str = KEY_ID) -> int:
    """The key's token counter in the store, as the management API reads it."""
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", "dev-admin-token") as client:
        state = client.get("api_key", key_id)
    return sum(limit.used for limit in state.limits if limit.kind == "tokens")


def grown(
    before: dict[Any, float], after: dict[Any, float], token_type: str, key_id: str = KEY_ID
) -> float:
    labels = {"api_key_id": key_id, "model": MODEL, "token_type": token_type}
    return metric(after, "tokens_consumed_total", **labels) - metric(
        before, "tokens_consumed_total", **labels
    )


def test_a_response_is_answered_billed_and_reported_in_every_ledger(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    raw = client_of(stack, key=LEDGER_KEY).responses.with_raw_response.create(
        model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=200
    )
    answer = raw.parse()

    assert answer.output_text == REPLY and answer.status == "completed"
    assert answer.usage is not None
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)
    upstream = responses_requests(stack)[-1]
    assert upstream["path"] == "/v1/responses"
    assert upstream["headers"]["authorization"] == "Bearer mock-provider-key"
    assert LEDGER_KEY not in orjson.dumps(upstream).decode()

    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["route"], line["model"], line["api_key_id"]) == (ROUTE, MODEL, LEDGER_ID)
    assert line["http_status_code"] == 200 and line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (INPUT_TOKENS, OUTPUT_TOKENS)
    assert line["usage_reported"] is True and line["finish_reasons"] == ["completed"]
    # gpt-4.1-nano: $0.10 in, $0.40 out per million.
    assert line["cost_usd"] == pytest.approx((INPUT_TOKENS * 0.10 + OUTPUT_TOKENS * 0.40) / 1e6)

    after = scrape(stack.metrics_url)
    assert grown(before, after, "prompt", LEDGER_ID) == INPUT_TOKENS
    assert grown(before, after, "completion", LEDGER_ID) == OUTPUT_TOKENS
    row = wait_for(lambda: usage_rows(stack, "api_key").get(LEDGER_ID), 20)
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
        1,
        INPUT_TOKENS,
        OUTPUT_TOKENS,
    )
    # Reserved the estimate plus max_output_tokens, settled on the provider's count.
    total = INPUT_TOKENS + OUTPUT_TOKENS
    assert wait_for(lambda: tokens_used(stack, LEDGER_ID) == total, 10)


def test_a_streamed_response_is_read_whole_and_billed_by_its_completed_event(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    used_before = tokens_used(stack)
    text = ""
    kinds: list[str] = []
    with client_of(stack).responses.with_streaming_response.create(
        model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        for event in response.parse():
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type == "response.completed":
                usage = event.response.usage
    assert text == REPLY
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert usage is not None and usage.input_tokens == INPUT_TOKENS

    [line] = gateway_log.for_request(request_id)
    assert line["stream"] is True and line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (INPUT_TOKENS, OUTPUT_TOKENS)
    assert line["usage_reported"] is True and line["finish_reasons"] == ["completed"]
    after = scrape(stack.metrics_url)
    assert grown(before, after, "completion") == OUTPUT_TOKENS
    total = INPUT_TOKENS + OUTPUT_TOKENS
    assert wait_for(lambda: tokens_used(stack) - used_before == total, 10)


def test_a_response_cut_by_max_output_tokens_is_billed_and_says_so(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    raw = client_of(stack).responses.with_raw_response.create(
        model=MODEL, input="word " * 40, max_output_tokens=16
    )
    answer = raw.parse()
    assert answer.status == "incomplete"
    assert answer.usage is not None and answer.usage.output_tokens == 16
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["completion_tokens"] == 16
    assert line["finish_reasons"] == ["incomplete:max_output_tokens"]


def test_a_provider_error_mid_stream_reaches_the_client_and_is_charged(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    with client_of(stack).responses.with_streaming_response.create(
        model=MODEL,
        input=QUESTION,
        stream=True,
        extra_headers={"x-mock-fault": "error_after=2"},
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(openai.APIError, match="The server had an error"):
            for _ in response.parse():
                pass
    [line] = gateway_log.for_request(request_id)
    assert line["http_status_code"] == 200 and line["outcome"] == "upstream_error"
    assert line["error_code"] == "server_error" and line["usage_estimated"] is True
    assert line["prompt_tokens"] >= 1 and line["completion_tokens"] >= 1
    after = scrape(stack.metrics_url)
    assert grown(before, after, "completion") == line["completion_tokens"]


@pytest.mark.parametrize(
    ("base_path", "route"),
    [("/openai/v1", "openai-prefix-responses"), ("/openai", "openai-bare-prefix-responses")],
)
def test_an_sdk_based_at_the_openai_prefix_reaches_responses_too(
    stack: LocalStack, gateway_log: GatewayLog, base_path: str, route: str
) -> None:
    raw = client_of(stack, base_path).responses.with_raw_response.create(
        model=MODEL, input=QUESTION
    )
    assert raw.parse().output_text == REPLY
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["route"] == route


def test_a_background_request_is_a_400_that_never_reaches_the_provider(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    sent_before = len(responses_requests(stack))
    with pytest.raises(openai.BadRequestError) as refused:
        client_of(stack).responses.create(model=MODEL, input=QUESTION, background=True)
    body = refused.value.body
    assert isinstance(body, dict) and body["param"] == "background"
    assert len(responses_requests(stack)) == sent_before
    [line] = gateway_log.for_request(refused.value.response.headers["x-request-id"])
    assert line["http_status_code"] == 400 and line["quota_decision"] is None


def test_a_guard_refuses_a_prompt_in_the_input_before_the_provider(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    sent_before = len(responses_requests(stack))
    used_before = tokens_used(stack)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client_of(stack).responses.create(
            model=MODEL,
            input=[{"role": "user", "content": [{"type": "input_text", "text": "A credit card?"}]}],
        )
    body = refused.value.body
    assert isinstance(body, dict) and body["message"] == "Not about credit cards."
    assert len(responses_requests(stack)) == sent_before
    [line] = gateway_log.for_request(refused.value.response.headers["x-request-id"])
    assert line["guardrails"] == [{"guard": "card-talk", "phase": "request", "action": "reject"}]
    assert tokens_used(stack) == used_before


def test_a_model_of_a_provider_without_the_api_is_a_400(stack: LocalStack) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client_of(stack).responses.create(model="claude-3-5-haiku-latest", input="hi")
    assert refused.value.code == "unsupported_model_for_route"


def test_the_web_searches_of_a_response_are_billed_per_call(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """OpenAI bills each web search its tools made on top of the tokens ($10 per 1,000 in
    the default config): a JSON answer and a stream, each with two searches."""
    client = client_of(stack)
    searches = {"x-mock-server-tool-use": "web_search=2"}
    raw = client.responses.with_raw_response.create(
        model=MODEL, input=QUESTION, tools=[{"type": "web_search"}], extra_headers=searches
    )
    answer = raw.parse()
    assert [item.type for item in answer.output] == ["web_search_call"] * 2 + ["message"]
    with client.responses.with_streaming_response.create(
        model=MODEL,
        input=QUESTION,
        tools=[{"type": "web_search"}],
        stream=True,
        extra_headers=searches,
    ) as response:
        stream_id = response.headers["x-request-id"]
        kinds = [event.type for event in response.parse()]
    assert kinds.count("response.web_search_call.completed") == 2

    for request_id in (raw.headers["x-request-id"], stream_id):
        [line] = gateway_log.for_request(request_id)
        assert line["server_tool_requests"] == {"web_search": 2}
        tokens = (line["prompt_tokens"] * 0.10 + line["completion_tokens"] * 0.40) / 1e6
        assert line["cost_usd"] == pytest.approx(tokens + 2 * 0.01)
        assert line["cost_priced"] is True


# A stored prompt as OpenAI's dashboard names one; the mock reads it as its variables.
PROMPT_ID = "pmpt_68bee228e8288196811e9e0426855ad501793deee998d9b1"


def test_a_request_built_from_a_stored_prompt_needs_no_input_and_is_billed(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    prompt: Any = {"id": PROMPT_ID, "variables": {"place": "a lighthouse"}}
    raw = client_of(stack).responses.with_raw_response.create(model=MODEL, prompt=prompt)
    answer = raw.parse()
    assert answer.output_text == "Mock reply to: a lighthouse"
    assert answer.usage is not None
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["outcome"] == "completed" and line["usage_reported"] is True
    assert line["prompt_tokens"] == answer.usage.input_tokens


def test_a_guard_reads_a_stored_prompts_variables_before_the_provider(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    sent_before = len(responses_requests(stack))
    prompt: Any = {"id": PROMPT_ID, "variables": {"topic": "credit card numbers"}}
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client_of(stack).responses.create(model=MODEL, input="Go on.", prompt=prompt)
    body = refused.value.body
    assert isinstance(body, dict) and body["message"] == "Not about credit cards."
    assert len(responses_requests(stack)) == sent_before


def test_a_stored_response_the_gateway_never_saw_is_a_404_before_the_provider(
    stack: LocalStack,
) -> None:
    """Retrieving, deleting, cancelling and listing the input items of a response the
    gateway has no record of: OpenAI's 404 for an unknown id, before any provider (a
    stored response is served to its creator alone: docs/providers.md)."""
    client = client_of(stack)
    used_before = tokens_used(stack)
    sent_before = len(mock_requests(stack))
    calls = [
        lambda: client.responses.retrieve("resp_1"),
        lambda: client.responses.delete("resp_1"),
        lambda: client.responses.cancel("resp_1"),
        lambda: client.responses.input_items.list("resp_1"),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as refused:
            call()
        assert refused.value.message.endswith("Response with id 'resp_1' not found.")
    with pytest.raises(openai.AuthenticationError):
        client_of(stack, key="not-a-key").responses.retrieve("resp_1")
    assert len(mock_requests(stack)) == sent_before
    assert tokens_used(stack) == used_before


# --- stored responses belong to their creator ---------------------------------------------


def test_only_the_caller_who_created_a_response_continues_it(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    created = client_of(stack).responses.create(model=MODEL, input=QUESTION)
    # Streamed, right after the first: the record is there before the client reads the end.
    with client_of(stack).responses.create(
        model=MODEL, input="And then?", previous_response_id=created.id, stream=True
    ) as events:
        last = list(events)[-1]
    assert last.type == "response.completed"
    second = last.response
    raw = client_of(stack).responses.with_raw_response.create(
        model=MODEL, input="How does it end?", previous_response_id=second.id
    )
    third = raw.parse()
    assert third.status == "completed"
    assert responses_requests(stack)[-1]["json"]["previous_response_id"] == second.id
    # The provider bills the stored context a continuation reads as input (the whole
    # chain: the second's total holds the first's), and so does every ledger.
    assert second.usage is not None and third.usage is not None
    own = count_tokens("How does it end?") + 4 + 2
    assert third.usage.input_tokens == own + second.usage.total_tokens
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["prompt_tokens"] == third.usage.input_tokens

    sent_before = len(mock_requests(stack))
    other = client_of(stack, key=OTHER_KEY)
    for response_id in (created.id, second.id, "resp_never_made"):
        with pytest.raises(openai.BadRequestError) as refused:
            other.responses.create(model=MODEL, input="Continue", previous_response_id=response_id)
        # What OpenAI answers an id it does not know: whose it is stays untold.
        assert refused.value.code == "previous_response_not_found"
        assert refused.value.param == "previous_response_id"
        with pytest.raises(openai.BadRequestError) as refused:
            other.responses.compact(model=MODEL, previous_response_id=response_id)
        assert refused.value.code == "previous_response_not_found"
    assert len(mock_requests(stack)) == sent_before


def test_the_creator_retrieves_lists_and_deletes_a_stored_response_others_cannot(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    owner, other = client_of(stack, key=STORED_KEY), client_of(stack, key=OTHER_KEY)
    created = owner.responses.create(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION)
    total = INPUT_TOKENS + OUTPUT_TOKENS
    assert wait_for(lambda: tokens_used(stack, STORED_ID) == total, 10)
    before = scrape(stack.metrics_url)

    raw = owner.responses.with_raw_response.retrieve(created.id)
    retrieved = raw.parse()
    assert retrieved.id == created.id and retrieved.output_text == REPLY
    # The stored response carries the usage it was billed for; reading it bills nothing.
    assert retrieved.usage is not None and retrieved.usage.output_tokens == OUTPUT_TOKENS
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["route"], line["provider"], line["http_status_code"]) == (
        "openai-responses-stored",
        "mock",
        200,
    )
    assert line["total_tokens"] == 0 and line["cost_usd"] == 0
    upstream = mock_requests(stack)[-1]
    assert (upstream["method"], upstream["path"]) == ("GET", f"/v1/responses/{created.id}")
    assert upstream["headers"]["authorization"] == "Bearer mock-provider-key"
    assert STORED_KEY not in orjson.dumps(upstream).decode()

    items = owner.responses.input_items.list(created.id, order="asc")
    assert [item.type for item in items.data] == ["message"]
    assert items.data[0].content[0].text == QUESTION  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError):
        owner.responses.cancel(created.id)  # the provider's: not a background response

    sent_before = len(mock_requests(stack))
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(created.id)
    assert len(mock_requests(stack)) == sent_before

    deleted = owner.responses.with_raw_response.delete(created.id)
    assert deleted.status_code == 200 and orjson.loads(deleted.content)["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        owner.responses.retrieve(created.id)
    with pytest.raises(openai.BadRequestError) as refused:
        owner.responses.create(model=MODEL, input="More", previous_response_id=created.id)
    assert refused.value.code == "previous_response_not_found"

    after = scrape(stack.metrics_url)
    for token_type in ("prompt", "completion"):
        assert grown(before, after, token_type, STORED_ID) == 0
    assert tokens_used(stack, STORED_ID) == total


# --- compaction and token counts ------------------------------------------------------------


def test_a_compaction_is_answered_billed_and_reported_in_every_ledger(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    raw = client_of(stack, key=COMPACT_KEY).responses.with_raw_response.compact(
        model=MODEL, instructions=INSTRUCTIONS, input=QUESTION
    )
    compacted = raw.parse()

    # The client gets the compacted window: its user message kept, then the compaction.
    assert compacted.object == "response.compaction"
    output = orjson.loads(raw.content)["output"]
    assert [item["type"] for item in output] == ["message", "compaction"]
    assert output[0]["role"] == "user" and output[0]["content"][0]["text"] == QUESTION
    # The mock summarises as it would answer: the same input, the reply's tokens out.
    usage = compacted.usage
    assert (usage.input_tokens, usage.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)
    upstream = mock_requests(stack)[-1]
    assert upstream["path"] == "/v1/responses/compact"
    assert upstream["headers"]["authorization"] == "Bearer mock-provider-key"

    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["route"], line["model"], line["api_key_id"]) == (
        "openai-responses-compact",
        MODEL,
        COMPACT_ID,
    )
    assert line["http_status_code"] == 200 and line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (INPUT_TOKENS, OUTPUT_TOKENS)
    assert line["usage_reported"] is True and line["stream"] is False
    # gpt-4.1-nano: $0.10 in, $0.40 out per million.
    assert line["cost_usd"] == pytest.approx((INPUT_TOKENS * 0.10 + OUTPUT_TOKENS * 0.40) / 1e6)

    after = scrape(stack.metrics_url)
    assert grown(before, after, "prompt", COMPACT_ID) == INPUT_TOKENS
    assert grown(before, after, "completion", COMPACT_ID) == OUTPUT_TOKENS
    row = wait_for(lambda: usage_rows(stack, "api_key").get(COMPACT_ID), 20)
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
        1,
        INPUT_TOKENS,
        OUTPUT_TOKENS,
    )
    # Reserved the estimate plus quotas.default_max_tokens, settled on the provider's count.
    assert wait_for(lambda: tokens_used(stack, COMPACT_ID) == INPUT_TOKENS + OUTPUT_TOKENS, 10)


@pytest.mark.parametrize(
    ("base_path", "prefix"), [("/openai/v1", "openai-prefix"), ("/openai", "openai-bare-prefix")]
)
def test_an_sdk_based_at_the_openai_prefix_compacts_and_counts_too(
    stack: LocalStack, gateway_log: GatewayLog, base_path: str, prefix: str
) -> None:
    client = client_of(stack, base_path)
    raw = client.responses.with_raw_response.compact(model=MODEL, input=QUESTION)
    assert raw.parse().usage.output_tokens == OUTPUT_TOKENS
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["route"] == f"{prefix}-responses-compact"
    counted = client.responses.input_tokens.with_raw_response.count(model=MODEL, input=QUESTION)
    assert counted.parse().input_tokens == count_tokens(QUESTION) + 4 + 2
    [line] = gateway_log.for_request(counted.headers["x-request-id"])
    assert line["route"] == f"{prefix}-responses-input-tokens"


def test_a_compaction_skips_the_response_headers_message_and_comes_whole(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """The lean response path (docs/architecture.md): request headers, request body and the
    whole answer in one buffered message, each one answered (Envoy's own count)."""
    sent = envoy_stat(stack, "aigw.ext_proc.stream_msgs_sent")
    received = envoy_stat(stack, "aigw.ext_proc.stream_msgs_received")
    answer = httpx.post(
        f"{stack.base_url}/v1/responses/compact",
        content=orjson.dumps({"model": MODEL, "input": QUESTION, "stream": False}),
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
        timeout=30.0,
    )
    sent = envoy_stat(stack, "aigw.ext_proc.stream_msgs_sent") - sent
    received = envoy_stat(stack, "aigw.ext_proc.stream_msgs_received") - received
    assert answer.status_code == 200 and answer.json()["object"] == "response.compaction"
    assert (sent, received) == (3, 3)
    [line] = gateway_log.for_request(answer.headers["x-request-id"])
    assert line["completion_tokens"] == answer.json()["usage"]["output_tokens"]


def test_a_compaction_asked_to_stream_is_a_400_that_never_reaches_the_provider(
    stack: LocalStack,
) -> None:
    sent_before = len(mock_requests(stack))
    with pytest.raises(openai.BadRequestError) as refused:
        client_of(stack).responses.compact(model=MODEL, input=QUESTION, extra_body={"stream": True})
    body = refused.value.body
    assert isinstance(body, dict) and body["param"] == "stream"
    assert len(mock_requests(stack)) == sent_before


def test_a_compaction_or_count_of_a_model_without_the_api_is_a_400(stack: LocalStack) -> None:
    client = client_of(stack)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.compact(model="claude-3-5-haiku-latest", input="hi")
    assert refused.value.code == "unsupported_model_for_route"
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.input_tokens.count(model="claude-3-5-haiku-latest", input="hi")
    assert refused.value.code == "unsupported_model_for_route"


def test_a_token_count_is_the_providers_count_and_billed_nothing(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    raw = client_of(stack).responses.input_tokens.with_raw_response.count(
        model=MODEL, instructions=INSTRUCTIONS, input=QUESTION
    )
    counted = raw.parse()
    # The mock counts what a /v1/responses call of this body would report as its input.
    assert counted.object == "response.input_tokens" and counted.input_tokens == INPUT_TOKENS
    assert mock_requests(stack)[-1]["path"] == "/v1/responses/input_tokens"

    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["route"] == "openai-responses-input-tokens" and line["http_status_code"] == 200
    assert (line["prompt_tokens"], line["completion_tokens"], line["cost_usd"]) == (0, 0, 0)
    assert line["usage_reported"] is False
    after = scrape(stack.metrics_url)
    assert grown(before, after, "prompt") == 0 and grown(before, after, "completion") == 0


def test_a_token_count_holds_no_quota_tokens(stack: LocalStack, gateway_log: GatewayLog) -> None:
    """A count generates nothing: the stack's token limits do not apply to it."""
    used_before = tokens_used(stack)
    raw = client_of(stack).responses.input_tokens.with_raw_response.count(
        model=MODEL, input=QUESTION
    )
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["quota_decision"] == "none"  # the stack's rules limit tokens alone
    assert tokens_used(stack) == used_before

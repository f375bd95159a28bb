"""Bedrock's InvokeModel with Claude's body through the gateway: boto3's ``invoke_model``
and ``invoke_model_with_response_stream`` with the gateway as the endpoint and the
gateway key as the bearer token, over real Envoy (HTTPS), the gateway, embedded Valkey
and the mock Bedrock, which checks the gateway's SigV4 signature and answers Claude's
InvokeModel as Bedrock does. The stack is the Converse tests' (HTTPS, a guarded route, a
hard-capped team2), its fixtures imported: their names as test parameters read to ruff
as redefinitions."""

# ruff: noqa: F401, F811

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import unquote

import anthropic
import boto3
import orjson
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError, ReadTimeoutError

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, metric, mock_requests, scrape, wait_for
from tests.integration.test_bedrock_converse import (
    CLIENT_KEY,
    INPUT_PRICE,
    MODEL,
    NOVA_BUDGET,
    OUTPUT_PRICE,
    ROUTE,
    TlsStack,
    assert_spent_budget_refusal,
    bedrock_client,
    stack,
    tls,
    with_headers,
)

PROMPT = [{"role": "user", "content": "Say hello to the gateway, please."}]


def claude_body(**more: Any) -> str:
    """An InvokeModel body for Claude, as a boto3 user writes one."""
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 200, "messages": PROMPT}
    return json.dumps({**body, **more})


def invocations(stack: LocalStack) -> list[dict[str, Any]]:
    return [r for r in mock_requests(stack) if "/invoke" in r["path"]]


def events_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The Anthropic events of an InvokeModelWithResponseStream answer, as boto3 gives them."""
    return [json.loads(part["chunk"]["bytes"]) for part in answer["body"]]


def request_id(answer: dict[str, Any]) -> str:
    return str(answer["ResponseMetadata"]["HTTPHeaders"]["x-request-id"])


def test_invoke_model_reaches_claude_signed_by_the_gateway_and_is_billed(
    tls: TlsStack, stack: LocalStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = scrape(stack.metrics_url)
    body = claude_body()
    answer = bedrock_client(tls, monkeypatch).invoke_model(
        modelId=MODEL, body=body, contentType="application/json", accept="application/json"
    )

    message = json.loads(answer["body"].read())
    assert message["type"] == "message" and message["content"][0]["text"]
    usage = message["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0

    upstream = invocations(stack)[-1]
    assert unquote(upstream["path"]) == f"/model/{MODEL}/invoke"
    assert upstream["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCK/")
    # The client's bytes as they came (the mock verified the signature over them).
    assert upstream["body"] == body
    assert CLIENT_KEY not in orjson.dumps(upstream).decode()

    [line] = gateway_log.for_request(request_id(answer))
    assert (line["route"], line["provider"], line["model"]) == (ROUTE, "mock-bedrock", MODEL)
    assert line["http_status_code"] == 200 and line["outcome"] == "completed"
    assert line["stream"] is False and line["usage_reported"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )
    expected_cost = (
        usage["input_tokens"] * INPUT_PRICE + usage["output_tokens"] * OUTPUT_PRICE
    ) / 1e6
    assert line["cost_usd"] == pytest.approx(expected_cost)

    after = scrape(stack.metrics_url)
    for kind, count in (("prompt", usage["input_tokens"]), ("completion", usage["output_tokens"])):
        grown = metric(after, "tokens_consumed_total", model=MODEL, token_type=kind) - metric(
            before, "tokens_consumed_total", model=MODEL, token_type=kind
        )
        assert grown == count


def test_the_stream_reaches_the_client_as_bedrocks_frames_and_its_usage_is_billed(
    tls: TlsStack, stack: LocalStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = bedrock_client(tls, monkeypatch).invoke_model_with_response_stream(
        modelId="haiku", body=claude_body()
    )

    events = events_of(answer)
    kinds = [event["type"] for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text
    prompt = events[0]["message"]["usage"]["input_tokens"]
    [completion] = [e["usage"]["output_tokens"] for e in events if e["type"] == "message_delta"]

    sent = invocations(stack)[-1]
    assert unquote(sent["path"]) == f"/model/{MODEL}/invoke-with-response-stream"
    [line] = gateway_log.for_request(request_id(answer))
    # Asked for by its alias, billed as the model.
    assert (line["route"], line["model"], line["stream"]) == (ROUTE, "haiku", True)
    assert line["outcome"] == "completed" and line["usage_reported"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (prompt, completion)


def test_a_stream_the_provider_breaks_off_is_charged_and_the_sdk_sees_bedrocks_error(
    tls: TlsStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = with_headers(bedrock_client(tls, monkeypatch), {"x-mock-fault": "error_after=2"})
    answer = client.invoke_model_with_response_stream(modelId=MODEL, body=claude_body())
    with pytest.raises(EventStreamError):
        events_of(answer)

    [line] = gateway_log.for_request(request_id(answer))
    # Claude reported its prompt up front; the output is what was generated before the error.
    assert line["usage_estimated"] is True and line["usage_reported"] is False
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
    assert line["error_code"] == "ModelStreamErrorException"
    assert "injected by x-mock-fault" in line["error_message"]


LLAMA = "meta.llama3-8b-instruct-v1:0"
TITAN = "amazon.titan-text-express-v1"
MISTRAL = "mistral.mistral-7b-instruct-v0:2"


def test_other_model_families_are_billed_by_the_counts_bedrock_reports(
    tls: TlsStack, stack: LocalStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = bedrock_client(tls, monkeypatch)
    llama = client.invoke_model(
        modelId=LLAMA, body=json.dumps({"prompt": "Say hello, please.", "max_gen_len": 50})
    )
    answer = json.loads(llama["body"].read())
    assert answer["generation"]
    [line] = gateway_log.for_request(request_id(llama))
    assert (line["route"], line["provider"], line["model"]) == (ROUTE, "mock-bedrock", LLAMA)
    assert line["usage_reported"] is True and line["outcome"] == "completed"
    assert line["finish_reasons"] == [answer["stop_reason"]]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        answer["prompt_token_count"],
        answer["generation_token_count"],
    )
    sent = invocations(stack)[-1]
    assert unquote(sent["path"]) == f"/model/{LLAMA}/invoke"
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCK/")

    titan = json.dumps({"inputText": "Say hello.", "textGenerationConfig": {"maxTokenCount": 30}})
    streamed = client.invoke_model_with_response_stream(modelId=TITAN, body=titan)
    chunks = events_of(streamed)
    assert "".join(chunk["outputText"] for chunk in chunks)
    metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]
    [line] = gateway_log.for_request(request_id(streamed))
    assert line["stream"] is True and line["usage_reported"] is True
    assert line["outcome"] == "completed"
    assert line["finish_reasons"] == [chunks[-1]["completionReason"]]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        metrics["inputTokenCount"],
        metrics["outputTokenCount"],
    )


def test_without_bedrocks_counts_the_answer_is_billed_by_the_counts_in_its_body(
    tls: TlsStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mock as a Bedrock-compatible server, or Bedrock behind a proxy that drops them:
    # no token count headers, no invocation metrics; the models' bodies keep their counts.
    client = with_headers(bedrock_client(tls, monkeypatch), {"x-mock-fault": "no_usage=1"})
    llama = client.invoke_model(
        modelId=LLAMA, body=json.dumps({"prompt": "Say hello, please.", "max_gen_len": 50})
    )
    assert "x-amzn-bedrock-input-token-count" not in llama["ResponseMetadata"]["HTTPHeaders"]
    answer = json.loads(llama["body"].read())
    [line] = gateway_log.for_request(request_id(llama))
    assert line["usage_reported"] is True and line["usage_estimated"] is False
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        answer["prompt_token_count"],
        answer["generation_token_count"],
    )

    titan = json.dumps({"inputText": "Say hello.", "textGenerationConfig": {"maxTokenCount": 30}})
    streamed = client.invoke_model_with_response_stream(modelId=TITAN, body=titan)
    # boto3 reads the stream to its end: its last chunk's stop reason ended it.
    chunks = events_of(streamed)
    assert chunks[-1]["completionReason"] == "FINISH"
    assert "amazon-bedrock-invocationMetrics" not in chunks[-1]
    [line] = gateway_log.for_request(request_id(streamed))
    assert (line["outcome"], line["error_code"]) == ("completed", None)
    assert line["usage_reported"] is True and line["usage_estimated"] is False
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        chunks[0]["inputTextTokenCount"],
        chunks[-1]["totalOutputTextTokenCount"],
    )

    # Mistral counts nothing: whole all the same, and estimated.
    mistral = json.dumps({"prompt": "Say hello.", "max_tokens": 30})
    streamed = client.invoke_model_with_response_stream(modelId=MISTRAL, body=mistral)
    chunks = events_of(streamed)
    assert chunks[-1]["outputs"][0]["stop_reason"] == "stop"
    [line] = gateway_log.for_request(request_id(streamed))
    assert (line["outcome"], line["error_code"]) == ("completed", None)
    assert line["usage_estimated"] is True and line["completion_tokens"] > 0


def test_another_familys_stream_broken_off_is_charged_its_estimate(
    tls: TlsStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = with_headers(bedrock_client(tls, monkeypatch), {"x-mock-fault": "error_after=2"})
    body = json.dumps({"prompt": "Tell me a long story about the gateway.", "max_tokens": 200})
    answer = client.invoke_model_with_response_stream(modelId=MISTRAL, body=body)
    with pytest.raises(EventStreamError):
        events_of(answer)

    [line] = gateway_log.for_request(request_id(answer))
    # No counts came: the prompt is the quota's estimate, the output the text streamed.
    assert line["usage_estimated"] is True and line["usage_reported"] is False
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
    assert line["error_code"] == "ModelStreamErrorException"


def test_bodies_bedrock_refuses_reach_the_client_in_bedrocks_words(
    tls: TlsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = bedrock_client(tls, monkeypatch)
    titan = json.dumps({"inputText": "hi", "textGenerationConfig": {"maxTokenCount": 20}})
    # Claude's body is read as a Messages call: one without messages is the gateway's 400.
    with pytest.raises(ClientError) as malformed:
        client.invoke_model(modelId=MODEL, body=titan)
    assert malformed.value.response["Error"]["Code"] == "ValidationException"
    assert "messages" in malformed.value.response["Error"]["Message"]

    # Another family's body is Bedrock's to check.
    with pytest.raises(ClientError) as refused:
        client.invoke_model(modelId=LLAMA, body=titan)
    error = refused.value.response
    assert error["Error"]["Code"] == "ValidationException"
    assert "required key [prompt] not found" in error["Error"]["Message"]


def test_a_hard_cap_lowers_max_tokens_then_refuses(
    tls: TlsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = bedrock_client(tls, monkeypatch, key="team2-key")
    # The hard-capped budget is shared with the Converse module's tests only by name: a
    # stack of its own (this module's) starts with the whole budget.
    first = client.invoke_model(modelId=MODEL, body=claude_body(max_tokens=4000))
    sent = orjson.loads(invocations(tls.stack)[-1]["body"])
    assert 0 < sent["max_tokens"] < 120
    assert json.loads(first["body"].read())["usage"]["output_tokens"] <= sent["max_tokens"]

    # Llama's allowance is max_gen_len: lowered as Claude's max_tokens is.
    llama = client.invoke_model(
        modelId=LLAMA, body=json.dumps({"prompt": "Hi", "max_gen_len": 2000})
    )
    sent = orjson.loads(invocations(tls.stack)[-1]["body"])
    assert 0 < sent["max_gen_len"] < 120
    assert json.loads(llama["body"].read())["generation_token_count"] <= sent["max_gen_len"]

    with pytest.raises(ClientError) as throttled:
        for _ in range(20):
            client.invoke_model(modelId=MODEL, body=claude_body())
    assert_spent_budget_refusal(throttled.value)


NOVA = "amazon.nova-lite-v1:0"


def nova_body(**config: Any) -> str:
    """Nova's InvokeModel body, as its pages write one."""
    doc = {"messages": [{"role": "user", "content": [{"text": "Say hello, please."}]}]}
    return json.dumps({**doc, "inferenceConfig": config})


def test_novas_allowance_is_reserved_and_a_hard_cap_lowers_it_where_the_client_wrote_it(
    tls: TlsStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, Nova's maxTokens was not read: every call reserved quotas.default_max_tokens
    (1024), so a hard-capped budget of 200 refused a call asking for 10 with a throttle,
    and a hard cap could not bound the answer."""
    client = with_headers(bedrock_client(tls, monkeypatch), {"x-budget": "nova-capped"})
    body = nova_body(maxTokens=10, temperature=0.5)
    small = client.invoke_model(modelId=NOVA, body=body)
    answer = json.loads(small["body"].read())
    assert answer["output"]["message"]["content"][0]["text"]
    assert answer["usage"]["outputTokens"] <= 10
    # Within the cap: the client's bytes as they came.
    assert invocations(tls.stack)[-1]["body"] == body
    [line] = gateway_log.for_request(request_id(small))
    assert line["quota_decision"] != "capped"

    # Nova's first pages name the allowance max_new_tokens: lowered under that name, no
    # maxTokens written beside it.
    streamed = client.invoke_model_with_response_stream(
        modelId=NOVA, body=nova_body(max_new_tokens=4000, topK=20)
    )
    chunks = events_of(streamed)
    sent = orjson.loads(invocations(tls.stack)[-1]["body"])
    config = sent["inferenceConfig"]
    assert set(config) == {"max_new_tokens", "topK"} and config["topK"] == 20
    assert 0 < config["max_new_tokens"] < NOVA_BUDGET
    [usage] = [chunk["metadata"]["usage"] for chunk in chunks if "metadata" in chunk]
    assert usage["outputTokens"] <= config["max_new_tokens"]
    [line] = gateway_log.for_request(request_id(streamed))
    assert line["quota_decision"] == "capped" and line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage["inputTokens"],
        usage["outputTokens"],
    )


def test_a_guarded_route_masks_the_prompt_and_the_answer_streamed_or_not(
    tls: TlsStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = bedrock_client(tls, monkeypatch, prefix="/guarded")
    reply = ["Write to ", "bob@example.com", " today."]
    scripted = with_headers(client, {"x-mock-reply": orjson.dumps(reply).decode()})
    prompt = [{"role": "user", "content": "I am jane@example.com, hi"}]

    answer = scripted.invoke_model(
        modelId=MODEL, body=claude_body(messages=prompt, system="Reply to jane@example.com")
    )

    sent = orjson.loads(invocations(tls.stack)[-1]["body"])
    assert "jane@example.com" not in orjson.dumps(sent).decode()
    assert sent["messages"][0]["content"].startswith("I am ")
    message = json.loads(answer["body"].read())
    text = message["content"][0]["text"]
    assert text.startswith("Write to ") and "bob@example.com" not in text
    [line] = gateway_log.for_request(request_id(answer))
    assert {(d["guard"], d["action"]) for d in line["guardrails"]} >= {
        ("pii-in", "mask"),
        ("pii-out", "mask"),
    }

    # Streamed, the address is masked inside Bedrock's frames, however the pieces fall.
    streamed = scripted.invoke_model_with_response_stream(
        modelId=MODEL, body=claude_body(messages=prompt)
    )
    events = events_of(streamed)  # boto3 checked every frame's CRCs
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text.startswith("Write to ") and text.endswith(" today.")
    assert "bob@example.com" not in text
    assert events[-1]["type"] == "message_stop"
    [line] = gateway_log.for_request(request_id(streamed))
    assert ("pii-out", "mask") in {(d["guard"], d["action"]) for d in line["guardrails"]}
    assert line["usage_reported"] is True and line["outcome"] == "completed"

    # Another family's body is not read by the guards: refused, before any provider.
    sent_before = len(invocations(tls.stack))
    with pytest.raises(ClientError) as unread:
        client.invoke_model(modelId=LLAMA, body=json.dumps({"prompt": "jane@example.com"}))
    assert unread.value.response["Error"]["Code"] == "ValidationException"
    assert "converse" in unread.value.response["Error"]["Message"]
    assert len(invocations(tls.stack)) == sent_before


def test_the_client_may_send_the_body_as_bytes_in_any_key_order(
    tls: TlsStack, stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LangChain's ChatBedrock and others send bytes; the gateway signs them as they came.
    body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, ' + (
        b'"anthropic_version": "bedrock-2023-05-31"}'
    )
    answer = bedrock_client(tls, monkeypatch).invoke_model(modelId=MODEL, body=body)
    assert json.loads(answer["body"].read())["stop_reason"]
    recorded = invocations(stack)[-1]["body"]
    assert base64.b64encode(recorded.encode()) == base64.b64encode(body)


def test_anthropics_bedrock_client_reaches_claude_through_the_gateway(
    tls: TlsStack, stack: LocalStack, gateway_log: GatewayLog
) -> None:
    # anthropic's AnthropicBedrock: the gateway as its Bedrock endpoint, the gateway key
    # as its Bedrock API key. It sends its own API version unless the body names
    # Bedrock's (docs/mock-llm.md).
    version = {"anthropic_version": "bedrock-2023-05-31"}
    with anthropic.DefaultHttpxClient(verify=str(tls.ca), timeout=30.0) as http:
        client = anthropic.AnthropicBedrock(
            base_url=tls.url,
            api_key=CLIENT_KEY,
            aws_region="us-east-1",
            http_client=http,
            max_retries=0,
        )
        raw = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=100, messages=PROMPT, extra_body=version
        )
        message = raw.parse()
        with client.messages.stream(
            model="haiku", max_tokens=100, messages=PROMPT, extra_body=version
        ) as stream:
            streamed = stream.get_final_message()
            streamed_id = stream.response.headers["x-request-id"]

    assert message.content[0].type == "text" and message.content[0].text
    assert streamed.usage.output_tokens > 0
    [plain, flowing] = invocations(stack)[-2:]
    assert unquote(plain["path"]) == f"/model/{MODEL}/invoke"
    assert unquote(flowing["path"]) == f"/model/{MODEL}/invoke-with-response-stream"
    assert CLIENT_KEY not in orjson.dumps([plain, flowing]).decode()
    # The lines are written after the answers: waited for, by request id.
    [whole] = gateway_log.for_request(raw.headers["x-request-id"])
    [streamed_line] = gateway_log.for_request(streamed_id)
    assert (whole["route"], whole["stream"]) == (ROUTE, False)
    assert (streamed_line["route"], streamed_line["stream"]) == (ROUTE, True)
    assert streamed_line["completion_tokens"] == streamed.usage.output_tokens


def counts_sent(stack: LocalStack) -> list[dict[str, Any]]:
    return [r for r in mock_requests(stack) if r["path"].endswith("/count-tokens")]


def test_count_tokens_is_answered_by_bedrock_and_never_billed(
    tls: TlsStack, stack: LocalStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = bedrock_client(tls, monkeypatch)
    before = scrape(stack.metrics_url)
    body = claude_body()
    counted = client.count_tokens(modelId=MODEL, input={"invokeModel": {"body": body}})
    converse_prompt = [{"role": "user", "content": [{"text": PROMPT[0]["content"]}]}]
    conversed = client.count_tokens(
        modelId="haiku", input={"converse": {"messages": converse_prompt}}
    )
    after = scrape(stack.metrics_url)
    for model in (MODEL, "haiku"):
        for kind in ("prompt", "completion"):
            was = metric(before, "tokens_consumed_total", model=model, token_type=kind)
            assert metric(after, "tokens_consumed_total", model=model, token_type=kind) == was

    # The counts a call with the same prompt reports as its input.
    invoked = json.loads(client.invoke_model(modelId=MODEL, body=body)["body"].read())
    assert counted["inputTokens"] == invoked["usage"]["input_tokens"] > 0
    answered = client.converse(modelId=MODEL, messages=converse_prompt)
    assert conversed["inputTokens"] == answered["usage"]["inputTokens"] > 0

    first, second = counts_sent(stack)[-2:]
    assert unquote(first["path"]) == f"/model/{MODEL}/count-tokens"
    assert unquote(second["path"]) == f"/model/{MODEL}/count-tokens"  # the alias's model
    assert first["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCK/")
    sent = orjson.loads(first["body"])["input"]["invokeModel"]["body"]
    assert base64.b64decode(sent).decode() == body  # the client's bytes, as they came
    assert CLIENT_KEY not in orjson.dumps(first).decode()

    [line] = gateway_log.for_request(request_id(counted))
    assert (line["route"], line["model"], line["http_status_code"]) == (ROUTE, MODEL, 200)
    assert line["prompt_tokens"] == line["completion_tokens"] == 0
    assert line["usage_reported"] is False and line["cost_usd"] == 0


def test_a_guarded_route_masks_what_a_count_sends_and_refuses_what_it_cannot_read(
    tls: TlsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = bedrock_client(tls, monkeypatch, prefix="/guarded")
    prompt = [{"role": "user", "content": "I am jane@example.com, hi"}]
    client.count_tokens(
        modelId=MODEL, input={"invokeModel": {"body": claude_body(messages=prompt)}}
    )
    sent = orjson.loads(counts_sent(tls.stack)[-1]["body"])["input"]["invokeModel"]["body"]
    counted = json.loads(base64.b64decode(sent))
    assert counted["messages"][0]["content"].startswith("I am ")
    assert "jane@example.com" not in counted["messages"][0]["content"]

    converse_prompt = [{"role": "user", "content": [{"text": "I am jane@example.com"}]}]
    client.count_tokens(modelId=MODEL, input={"converse": {"messages": converse_prompt}})
    conversed = orjson.loads(counts_sent(tls.stack)[-1]["body"])["input"]["converse"]
    assert "jane@example.com" not in orjson.dumps(conversed).decode()

    # Another model's InvokeModel body is not read: refused, as InvokeModel itself is.
    titan = json.dumps({"inputText": "jane@example.com"})
    with pytest.raises(ClientError) as refused:
        client.count_tokens(
            modelId="amazon.titan-text-express-v1", input={"invokeModel": {"body": titan}}
        )
    assert refused.value.response["Error"]["Code"] == "ValidationException"


def test_an_embeddings_model_is_billed_its_input_through_invoke_model(
    tls: TlsStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = bedrock_client(tls, monkeypatch)
    answer = client.invoke_model(
        modelId="amazon.titan-embed-text-v2:0", body=json.dumps({"inputText": "embed me"})
    )
    vector = json.loads(answer["body"].read())
    assert vector["embedding"]
    [line] = gateway_log.for_request(request_id(answer))
    assert line["usage_reported"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (vector["inputTextTokenCount"], 0)


def test_a_broken_llama_stream_is_charged_the_prompt_llama_reported(
    tls: TlsStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = with_headers(bedrock_client(tls, monkeypatch), {"x-mock-fault": "error_after=3"})
    body = json.dumps({"prompt": "Tell me a long story about the gateway.", "max_gen_len": 200})
    answer = client.invoke_model_with_response_stream(modelId=LLAMA, body=body)
    received = []
    with pytest.raises(EventStreamError):
        for part in answer["body"]:
            received.append(json.loads(part["chunk"]["bytes"]))

    [line] = gateway_log.for_request(request_id(answer))
    # Llama's first chunk named the prompt's count: the bill starts from it.
    assert line["prompt_tokens"] == received[0]["prompt_token_count"] > 0
    assert line["completion_tokens"] >= received[-1]["generation_token_count"]
    assert line["usage_estimated"] is True


def test_an_answer_with_bedrocks_input_count_alone_is_billed_that_count(
    tls: TlsStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy dropped the output count header (the mock's ``no_output_count``): what is
    unknown (the output) is estimated, and the prompt is the count Bedrock bills, not
    the quota's estimate, for a Mistral answer whose body counts nothing and for a
    Claude answer the client left before its body came (the mock's ``hold_body``)."""
    dropped = {"x-mock-fault": "no_output_count=1"}
    client = with_headers(bedrock_client(tls, monkeypatch), dropped)
    # Twelve one-letter words: twelve tokens to the mock, five to the quota's estimate.
    body = json.dumps({"prompt": "a b c d e f g h i j k l", "max_tokens": 30})
    mistral = client.invoke_model(modelId=MISTRAL, body=body)
    headers = mistral["ResponseMetadata"]["HTTPHeaders"]
    assert "x-amzn-bedrock-output-token-count" not in headers
    text = json.loads(mistral["body"].read())["outputs"][0]["text"]
    [line] = gateway_log.for_request(request_id(mistral))
    assert (line["outcome"], line["usage_reported"], line["usage_estimated"]) == (
        "completed",
        False,
        True,
    )
    assert line["prompt_tokens"] == int(headers["x-amzn-bedrock-input-token-count"])
    assert line["completion_tokens"] == -(-len(text) // 4)

    # The count Bedrock gives Claude's body, then the same body whose client gives up.
    claude = claude_body()
    counted = bedrock_client(tls, monkeypatch).invoke_model(modelId=MODEL, body=claude)
    prompt = int(counted["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"])
    impatient = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=tls.url,
        verify=str(tls.ca),
        config=Config(retries={"total_max_attempts": 1}, read_timeout=1.5),
    )
    held = {"x-mock-fault": "no_output_count=1;hold_body=4"}
    aborted = len([each for each in gateway_log.lines() if each["outcome"] == "aborted"])
    with pytest.raises(ReadTimeoutError):
        with_headers(impatient, held).invoke_model(modelId=MODEL, body=claude)

    def left() -> list[dict[str, Any]]:
        return [each for each in gateway_log.lines() if each["outcome"] == "aborted"][aborted:]

    [line] = wait_for(left)
    assert (line["model"], line["upstream_status_code"]) == (MODEL, 200)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (prompt, 200)

"""InvokeModel bodies of model families other than Claude's: which body is Claude's, the
prompt estimate and completion allowance the quota reads, and the readers that bill
their answers by the counts Bedrock reports for every model."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from extproc.aws_eventstream import encode_event, encode_exception
from extproc.bedrock_invoke_bodies import (
    allowance_paths,
    cap_completion,
    completion_allowance,
    estimate_prompt_tokens,
    reads_as_claude,
)
from extproc.translators.base import counts_so_far, stream_failure
from extproc.translators.bedrock_invoke import ModelStreamReader, TokenHeaderReader

LLAMA = "meta.llama3-8b-instruct-v1:0"
TITAN = "amazon.titan-text-express-v1"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc"


def chunk(event: dict[str, Any]) -> bytes:
    encoded = base64.b64encode(orjson.dumps(event)).decode()
    return encode_event("chunk", orjson.dumps({"bytes": encoded}))


LLAMA_STREAM = [
    {"generation": "Hello", "prompt_token_count": 7, "generation_token_count": 1,
     "stop_reason": None},
    {"generation": " there", "prompt_token_count": None, "generation_token_count": 2,
     "stop_reason": "stop", "amazon-bedrock-invocationMetrics": {
         "inputTokenCount": 7, "outputTokenCount": 2, "invocationLatency": 30,
         "firstByteLatency": 10}},
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "body", "claude"),
    [
        ("anthropic.claude-3-haiku-20240307-v1:0", {}, True),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", {"prompt": "x"}, True),
        (LLAMA, {"anthropic_version": "bedrock-2023-05-31"}, False),
        # An ARN that hides its model: the body says.
        (PROFILE_ARN, {"anthropic_version": "bedrock-2023-05-31", "messages": []}, True),
        (PROFILE_ARN, {"prompt": "x"}, False),
    ],
)
def test_claudes_body_is_known_by_the_model_or_else_by_its_version(
    model: str, body: dict[str, Any], claude: bool
) -> None:
    assert reads_as_claude(model, body) is claude


def test_the_prompt_estimate_counts_every_string_of_the_body() -> None:
    body = {"inputText": "x" * 400, "textGenerationConfig": {"stopSequences": ["y" * 40]}}
    assert estimate_prompt_tokens(body) == 110  # 440 characters, 4 a token


@pytest.mark.parametrize(
    ("model", "body", "allowance"),
    [
        (LLAMA, {"prompt": "x", "max_gen_len": 300}, 300),
        ("mistral.mistral-7b-instruct-v0:2", {"prompt": "x", "max_tokens": 40}, 40),
        (TITAN, {"inputText": "x", "textGenerationConfig": {"maxTokenCount": 77}}, 77),
        # None named: what the model generates by default (Titan's 512), never more
        # than the operator's default.
        (TITAN, {"inputText": "x"}, 512),
        ("cohere.command-light-text-v14", {"prompt": "x"}, 20),
        ("mistral.mistral-large-2402-v1:0", {"prompt": "x"}, 4096),
        # A family whose page names no default: the operator's default.
        ("amazon.nova-lite-v1:0", {"messages": []}, 4096),
        ("cohere.command-r-v1:0", {"message": "x", "max_tokens": 10}, 10),
        ("amazon.nova-lite-v1:0", {"inferenceConfig": {"maxTokens": 12}}, 12),
        ("amazon.nova-lite-v1:0", {"inferenceConfig": {"max_new_tokens": 13}}, 13),
        ("openai.gpt-oss-20b-1:0", {"max_completion_tokens": 14, "max_tokens": 9}, 14),
        # No family the gateway knows (an image model): the default.
        ("amazon.nova-canvas-v1:0", {"imageGenerationConfig": {"maxTokens": 5}}, 4096),
        # A model an application profile's ARN hides: the default.
        (PROFILE_ARN, {"messages": [], "max_tokens": 10}, 4096),
    ],
)
def test_the_allowance_is_the_familys_own_field_else_the_default(
    model: str, body: dict[str, Any], allowance: int
) -> None:
    assert completion_allowance(model, body, 4096) == allowance


def test_a_hard_cap_lowers_or_sets_the_familys_field_and_leaves_unknown_ones() -> None:
    titan: dict[str, Any] = {"inputText": "x"}
    assert cap_completion([TITAN], titan, 50)
    assert titan["textGenerationConfig"] == {"maxTokenCount": 50}
    assert not cap_completion([TITAN], titan, 80)  # already below
    llama = {"prompt": "x", "max_gen_len": 500}
    assert cap_completion([LLAMA], llama, 60) and llama["max_gen_len"] == 60
    canvas = {"taskType": "TEXT_IMAGE"}
    assert allowance_paths("amazon.nova-canvas-v1:0") is None
    assert not cap_completion(["amazon.nova-canvas-v1:0"], canvas, 60)
    assert canvas == {"taskType": "TEXT_IMAGE"}


@pytest.mark.parametrize(
    ("model", "body", "capped"),
    [
        # The name the client used is lowered where it stands; none is added beside it.
        ("amazon.nova-lite-v1:0", {"inferenceConfig": {"max_new_tokens": 500, "topK": 5}},
         {"inferenceConfig": {"max_new_tokens": 60, "topK": 5}}),
        ("amazon.nova-lite-v1:0", {"inferenceConfig": {"topK": 5}},
         {"inferenceConfig": {"topK": 5, "maxTokens": 60}}),
        ("amazon.nova-lite-v1:0", {"inferenceConfig": "oops"},
         {"inferenceConfig": {"maxTokens": 60}}),
        ("openai.gpt-oss-20b-1:0", {"max_tokens": 500}, {"max_tokens": 60}),
        ("openai.gpt-oss-20b-1:0", {}, {"max_completion_tokens": 60}),
        # An allowance that is no count is replaced where it stands.
        ("openai.gpt-oss-20b-1:0", {"max_tokens": "500"}, {"max_tokens": 60}),
        # null is OpenAI's "unset": no allowance sent, and none written beside another.
        ("openai.gpt-oss-20b-1:0", {"max_completion_tokens": None, "max_tokens": 500},
         {"max_completion_tokens": None, "max_tokens": 60}),
        ("openai.gpt-oss-20b-1:0", {"max_tokens": None}, {"max_tokens": None,
                                                          "max_completion_tokens": 60}),
        ("cohere.command-r-v1:0", {"message": "x"}, {"message": "x", "max_tokens": 60}),
        ("us.cohere.command-r-plus-v1:0", {"max_tokens": 0}, {"max_tokens": 60}),
    ],
)  # fmt: skip
def test_a_hard_cap_writes_the_name_the_client_used_else_the_familys_own(
    model: str, body: dict[str, Any], capped: dict[str, Any]
) -> None:
    assert cap_completion([model], body, 60)
    assert body == capped


def test_a_json_answer_is_billed_by_bedrocks_token_headers_unparsed() -> None:
    headers = {
        "x-amzn-bedrock-input-token-count": "12",
        "x-amzn-bedrock-output-token-count": "5",
        "x-amzn-bedrock-service-tier": "flex",
    }
    reader = TokenHeaderReader(headers)
    assert reader.feed(b'{"generation": "hi"}', True) is None
    assert reader.usage is not None
    assert (reader.usage.prompt_tokens, reader.usage.completion_tokens) == (12, 5)
    assert reader.service_tier == "flex"
    assert reader.answer is None  # never parsed: the headers had the counts


def test_a_json_answer_without_counts_is_kept_for_the_estimate() -> None:
    reader = TokenHeaderReader({"x-amzn-bedrock-input-token-count": "nope"})
    reader.feed(b'{"generation": ', False)
    reader.feed(b'"hi"}', True)
    assert reader.usage is None and reader.answer == {"generation": "hi"}


def test_a_stream_is_billed_by_its_last_chunks_metrics_and_passes_unchanged() -> None:
    reader = ModelStreamReader()
    first, last = (chunk(event) for event in LLAMA_STREAM)
    # A frame's start waits for its end: the client gets each frame whole.
    assert reader.feed(first[:10], False) == b""
    assert reader.feed(first[10:], False) == first
    assert reader.usage is None and not reader.terminal_event_read
    assert b'"stop_reason":null' in reader.unwrapped  # the frame's event, unwrapped
    assert reader.feed(last, True) is None
    assert reader.terminal_event_read
    assert reader.usage is not None
    assert (reader.usage.prompt_tokens, reader.usage.completion_tokens) == (7, 2)
    assert reader.generated_chars == len("Hello there")
    assert b'"stop_reason":"stop"' in reader.unwrapped  # telemetry's finish reason


def test_an_exception_frame_is_the_streams_failure() -> None:
    reader = ModelStreamReader()
    reader.feed(chunk(LLAMA_STREAM[0]), False)
    reader.feed(encode_exception("modelStreamErrorException", b'{"message": "broke"}'), True)
    failure = stream_failure(reader)
    assert failure is not None and failure.error is not None
    assert failure.error.code == "ModelStreamErrorException"
    assert reader.usage is None and reader.generated_chars == len("Hello")


def test_generated_text_that_names_the_metrics_key_is_not_taken_for_them() -> None:
    reader = ModelStreamReader()
    reader.feed(
        chunk({"generation": "amazon-bedrock-invocationMetrics", "stop_reason": None}), False
    )
    assert reader.usage is None and not reader.terminal_event_read


def test_a_corrupt_frame_ends_the_reading() -> None:
    reader = ModelStreamReader()
    reader.feed(b"\x00\x00\x00\x10" + b"garbage-garbage-", True)
    assert stream_failure(reader) is not None


def test_a_cut_llama_stream_keeps_the_counts_it_reported() -> None:
    reader = ModelStreamReader()
    reader.feed(chunk(LLAMA_STREAM[0]), False)
    counted = counts_so_far(reader)
    assert counted is not None
    assert (counted.prompt_tokens, counted.completion_tokens) == (7, 1)


def test_a_broken_titan_stream_is_charged_from_the_prompt_it_reported() -> None:
    reader = ModelStreamReader()
    first = {"outputText": "Hi", "index": 0, "totalOutputTextTokenCount": 1,
             "completionReason": None, "inputTextTokenCount": 9}  # fmt: skip
    reader.feed(chunk(first), False)
    reader.feed(encode_exception("modelStreamErrorException", b'{"message": "x"}'), True)
    failure = stream_failure(reader)
    assert failure is not None and failure.error is not None
    assert (failure.prompt_tokens, failure.completion_tokens) == (9, 1)

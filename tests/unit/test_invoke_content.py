"""Content capture of InvokeModel calls in another family's body than Claude's: the log
line's ``prompt`` and ``completion`` hold the text the model read and wrote, as for every
other API, whatever field the family keeps it in."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from extproc.aws_eventstream import encode_event
from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.telemetry.invoke_content import answer_text, conversation
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_bedrock_invoke_review import AUTH, log_line, signing_processor
from tests.unit.test_telemetry_review import with_telemetry

LLAMA = "meta.llama3-8b-instruct-v1:0"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt": "<s>[INST] Hi [/INST]", "max_gen_len": 50}, [("user", "<s>[INST] Hi [/INST]")]),
        ({"inputText": "Hi Titan", "textGenerationConfig": {}}, [("user", "Hi Titan")]),
        (
            {
                "system": [{"text": "Be brief."}],
                "messages": [{"role": "user", "content": [{"text": "Hi Nova"}, {"image": {}}]}],
            },
            [("system", "Be brief."), ("user", "Hi Nova\n[image]")],
        ),
        (
            {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi Mistral"}]},
            [("system", "Be brief."), ("user", "Hi Mistral")],
        ),
        (
            {"preamble": "Be brief.", "message": "And now?",
             "chat_history": [{"role": "USER", "message": "Hi"},
                              {"role": "CHATBOT", "message": "Hello"}]},
            [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"),
             ("user", "And now?")],
        ),
    ],
)  # fmt: skip
def test_each_familys_prompt_is_read_with_its_roles(
    body: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert [(m["role"], m["content"]) for m in conversation(body)] == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b'{"generation": "Hello!", "prompt_token_count": 9, "stop_reason": "stop"}', "Hello!"),
        (b'{"inputTextTokenCount": 3, "results": [{"outputText": "Hi", "completionReason": '
         b'"FINISH"}]}', "Hi"),
        (b'{"outputs": [{"text": "Bonjour", "stop_reason": "stop"}]}', "Bonjour"),
        (b'{"output": {"message": {"role": "assistant", "content": [{"text": "Nova here"}]}},'
         b' "stopReason": "end_turn"}', "Nova here"),
        (b'{"choices": [{"message": {"role": "assistant", "content": "Jamba here"}}]}',
         "Jamba here"),
        (b'{"text": "Cohere here", "chat_history": [{"role": "USER", "message": "Hi"}]}',
         "Cohere here"),
    ],
)  # fmt: skip
def test_each_familys_answer_text_is_read(answer: bytes, expected: str) -> None:
    assert answer_text(answer) == expected


def test_a_streams_chunks_are_read_in_order_even_when_cut() -> None:
    chunks = b'{"generation": "Hel"}\n{"generation": "lo"}{"generation": " there", "stop'
    assert answer_text(chunks) == "Hello"
    assert answer_text(b"not json") is None


def llama_chunk(event: dict[str, Any]) -> bytes:
    """One InvokeModelWithResponseStream frame carrying ``event`` as Bedrock does."""
    payload = orjson.dumps({"bytes": base64.b64encode(orjson.dumps(event)).decode()})
    return encode_event("chunk", payload)


async def test_a_llama_stream_is_captured_in_the_log_line(
    config: GatewayConfig, services: Services
) -> None:
    logging_content = with_telemetry(config, log={"include_content": True})
    body = {"prompt": "Tell me about the gateway.", "max_gen_len": 50}
    events = [
        {"generation": "It ", "prompt_token_count": 7, "generation_token_count": 1},
        {"generation": "counts.", "generation_token_count": 2, "stop_reason": None},
        {"generation": "", "stop_reason": "stop", "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": 7, "outputTokenCount": 2}},
    ]  # fmt: skip
    path = f"/model/{quote(LLAMA, safe='')}/invoke-with-response-stream"
    stream_headers = {
        "content-type": "application/vnd.amazon.eventstream",
        "x-envoy-upstream-service-time": "4",
    }
    async with signing_processor(logging_content, services) as processor:
        await run_stream(
            processor,
            [
                request_headers(path, headers=AUTH),
                request_body(orjson.dumps(body)),
                response_headers(200, stream_headers),
                response_body(llama_chunk(events[0]) + llama_chunk(events[1]), False),
                response_body(llama_chunk(events[2]), True),
            ],
        )

    line = log_line(services)
    assert line["prompt"] == [{"role": "user", "content": "Tell me about the gateway."}]
    assert line["completion"] == "It counts."
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 2)

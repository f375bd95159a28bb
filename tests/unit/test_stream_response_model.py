"""The model a chat or text completions stream names, in the log line, when no usage chunk
names it.

OpenAI names the model that answered in every chunk of a stream, its usage chunk
included. The gateway read it from the usage chunk alone, so a stream without one (an
OpenAI-compatible provider that ignores ``stream_options.include_usage``, a stream the
client hung up on or the provider failed before its report) was logged with
``response_model: null``, and so were Envoy's access log, the span and
``gen_ai_client_token_usage``'s ``gen_ai_response_model``: "null where the provider names
none", yet the provider had named it in every chunk. Azure opens its streams with a chunk
of prompt filter results whose ``model`` is empty: the first chunk that names one is read.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.processor import Processor
from extproc.runtime import Services
from tests.unit.sse_play import only_line, play_sse
from tests.unit.test_openai_compatible_streams import (
    AUTH,
    CHAT,
    DONE,
    MODEL,
    PROMPT,
    error_event,
    usage,
)

SNAPSHOT = "gpt-4o-mini-2024-07-18"  # what OpenAI's chunks name for gpt-4o-mini


def chunk(model: str, choices: list[dict[str, Any]], **fields: Any) -> bytes:
    event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model}
    return b"data: " + orjson.dumps({**event, "choices": choices, **fields}) + b"\n\n"


def words(text: str, model: str = SNAPSHOT) -> bytes:
    return chunk(model, [{"index": 0, "delta": {"content": text}, "finish_reason": None}])


def finish(model: str = SNAPSHOT) -> bytes:
    return chunk(model, [{"index": 0, "delta": {}, "finish_reason": "stop"}])


def chat(*, include_usage: bool = True) -> bytes:
    fields: dict[str, Any] = {"model": MODEL, "stream": True, "messages": PROMPT}
    if include_usage:
        fields["stream_options"] = {"include_usage": True}
    return orjson.dumps(fields)


async def line_of(
    processor: Processor, services: Services, chunks: list[bytes], *, ended: bool = True
) -> dict[str, Any]:
    await play_sse(processor, CHAT, AUTH, chat(), chunks, ended=ended)
    return only_line(services)


async def test_a_stream_without_a_usage_chunk_logs_the_model_its_chunks_name(
    processor: Processor, services: Services
) -> None:
    # A provider that ignores include_usage: the answer is whole, its bill estimated.
    line = await line_of(processor, services, [words("Once"), words(" upon"), finish(), DONE])
    assert line["usage_estimated"] is True
    assert line["outcome"] == "completed"
    assert line["response_model"] == SNAPSHOT


async def test_a_stream_failed_before_its_report_logs_the_model_its_chunks_name(
    processor: Processor, services: Services
) -> None:
    line = await line_of(processor, services, [words("Once"), words(" upon"), error_event()])
    assert line["outcome"] == "upstream_error"
    assert line["response_model"] == SNAPSHOT


async def test_a_stream_the_client_left_logs_the_model_its_chunks_name(
    processor: Processor, services: Services
) -> None:
    line = await line_of(processor, services, [words("Once"), words(" upon")], ended=False)
    assert line["outcome"] == "aborted"
    assert line["response_model"] == SNAPSHOT


async def test_an_opening_chunk_with_an_empty_model_is_passed_over(
    processor: Processor, services: Services
) -> None:
    # Azure's first chunk: no choices, prompt filter results, model "".
    opening = chunk("", [], prompt_filter_results=[{"prompt_index": 0}])
    line = await line_of(processor, services, [opening, words("Once"), finish(), DONE])
    assert line["response_model"] == SNAPSHOT


async def test_the_usage_chunk_still_has_the_last_word(
    processor: Processor, services: Services
) -> None:
    report = chunk("gpt-4o-mini-2024-07-19", [], usage=usage(14, 2))
    line = await line_of(processor, services, [words("Once"), finish(), report, DONE])
    assert line["usage_reported"] is True
    assert line["response_model"] == "gpt-4o-mini-2024-07-19"


async def test_a_model_named_inside_the_generated_text_is_not_taken_for_it(
    processor: Processor, services: Services
) -> None:
    # The text is a JSON string, so its quotes are escaped: it cannot pass for the field.
    quoted = words('{"model": "not-this-one"}', model="")
    line = await line_of(processor, services, [quoted, words(" upon"), finish(), DONE])
    assert line["response_model"] == SNAPSHOT

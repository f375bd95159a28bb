"""The pages Claude's web search cited, in a streamed answer to an OpenAI client.

An OpenAI client asks Claude with ``web_search_options`` and ``stream: true``. Before, the
stream carried the text and no source at all: the same question asked without streaming
showed each cited page as a ``url_citation`` annotation, the stream showed none. OpenAI's
own search models stream their sources as ``delta.annotations``, in one chunk after the
text, with offsets into the whole message's ``content``; the openai SDK's stream helper
(``client.chat.completions.stream``, ``ChatCompletionStreamState``) gathers that chunk into
``message.annotations``. Now the Claude stream ends the same way, with the annotations the
whole answer would have had.

The stream is one Anthropic sends for a web search answer: text, the search call and its
results (not shown), then text blocks that cite pages by ``citations_delta`` events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from extproc.translators.openai_anthropic import CompletionTranslator, StreamTranslator

STREAMS = Path(__file__).resolve().parent.parent / "fixtures" / "openai_anthropic" / "streams"
SEARCH_STREAM = (STREAMS / "web_search.anthropic.txt").read_bytes()
WEATHER = "https://weather.example/paris"
METEO = "https://meteo.example/paris"


def streamed(body: bytes) -> list[ChatCompletionChunk]:
    """The chunks an OpenAI client reads from the translated stream, as the SDK parses them."""
    translator = StreamTranslator(include_usage=True, request_id="r1", created=1)
    sent = translator.feed(body, True)
    events = [event for event in sent.split(b"\n\n") if event]
    assert events[-1] == b"data: [DONE]"
    return [ChatCompletionChunk.model_validate_json(event[6:]) for event in events[:-1]]


def anthropic_message(body: bytes) -> dict[str, Any]:
    """The whole message the same events make, as Anthropic answers without streaming."""
    content: dict[int, dict[str, Any]] = {}
    for event in body.split(b"\n\n"):
        data = [line[6:] for line in event.split(b"\n") if line.startswith(b"data: ")]
        payload = orjson.loads(data[0]) if data else {}
        if payload.get("type") == "content_block_start":
            content[payload["index"]] = {**payload["content_block"], "citations": []}
        elif payload.get("type") == "content_block_delta":
            delta, block = payload["delta"], content[payload["index"]]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "citations_delta":
                block["citations"].append(delta["citation"])
    usage = {"input_tokens": 2679, "output_tokens": 61}
    blocks = [content[index] for index in sorted(content)]
    return {"type": "message", "content": blocks, "stop_reason": "end_turn", "usage": usage}


def test_a_streamed_search_answer_shows_the_pages_it_cited_as_the_sdk_gathers_them() -> None:
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for chunk in streamed(SEARCH_STREAM):
        state.handle_chunk(chunk)
    message = state.get_final_completion().choices[0].message
    content = message.content or ""
    assert content == (
        "I'll check the weather in Paris.Here is what I found. "
        "It is sunny, 21 °C, with a light west wind. Rain is expected this evening."
    )
    cited = [
        (
            a.url_citation.url,
            a.url_citation.title,
            content[a.url_citation.start_index : a.url_citation.end_index],
        )
        for a in message.annotations or []
    ]
    assert cited == [
        (WEATHER, "Paris weather", "It is sunny, 21 °C, with a light west wind"),
        (METEO, "Météo Paris", "It is sunny, 21 °C, with a light west wind"),
        (WEATHER, "Paris weather", "Rain is expected this evening."),
    ]


def test_the_stream_cites_what_the_whole_answer_cites() -> None:
    translator = CompletionTranslator(request_id="r1", created=1)
    whole = orjson.loads(
        translator.feed(orjson.dumps(anthropic_message(SEARCH_STREAM)), True) or b""
    )
    [carrying] = [
        c for c in streamed(SEARCH_STREAM) if c.choices and c.choices[0].delta.model_extra
    ]
    assert carrying.choices[0].delta.model_extra == {
        "annotations": whole["choices"][0]["message"]["annotations"]
    }


def test_the_annotations_come_in_one_chunk_after_the_text_and_before_the_finish() -> None:
    # One chunk: the SDK's stream helper cannot merge a second list of annotations into the
    # first (it takes list items without an "index" for a bug and raises).
    chunks = [c for c in streamed(SEARCH_STREAM) if c.choices]
    with_annotations = [i for i, c in enumerate(chunks) if c.choices[0].delta.model_extra]
    last_text = max(i for i, c in enumerate(chunks) if c.choices[0].delta.content)
    finish = [i for i, c in enumerate(chunks) if c.choices[0].finish_reason is not None]
    assert [last_text + 1] == with_annotations == [finish[0] - 1]
    assert chunks[last_text + 1].choices[0].delta.content is None


def event(payload: dict[str, Any]) -> bytes:
    name: str = payload["type"]
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload)


def test_an_answer_without_web_citations_has_no_annotations_chunk() -> None:
    # A document's citation (char_location) names no page: nothing OpenAI could show.
    document_citation = {
        "type": "char_location",
        "cited_text": "The Louvre opens at 9am.",
        "document_index": 0,
        "start_char_index": 0,
        "end_char_index": 24,
    }
    cites_document = event(
        {
            "type": "content_block_delta",
            "index": 4,
            "delta": {"type": "citations_delta", "citation": document_citation},
        }
    )
    events = [e for e in SEARCH_STREAM.split(b"\n\n") if b"citations_delta" not in e]
    first_cited_text = next(i for i, e in enumerate(events) if b'"index":4,"delta"' in e)
    events.insert(first_cited_text, cites_document)
    chunks = streamed(b"\n\n".join(events))
    assert not [c for c in chunks if c.choices and c.choices[0].delta.model_extra]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.endswith(
        "It is sunny, 21 °C, with a light west wind. Rain is expected this evening."
    )


def test_a_paused_search_turn_ends_as_a_stop_with_the_pages_cited_so_far() -> None:
    # Claude pausing a long search turn (pause_turn) is continued by sending the turn back,
    # which an OpenAI client cannot: it reads the text so far, and its sources, as a stop.
    paused = SEARCH_STREAM.replace(b'"stop_reason":"end_turn"', b'"stop_reason":"pause_turn"')
    assert paused != SEARCH_STREAM
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for chunk in streamed(paused):
        state.handle_chunk(chunk)
    choice = state.get_final_completion().choices[0]
    assert choice.finish_reason == "stop"
    assert len(choice.message.annotations or []) == 3

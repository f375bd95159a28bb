"""A Converse client's answers through the gateway: bytes unchanged, usage, tier and failures read.

The answers are Bedrock's own: a Converse JSON body, or ConverseStream's binary AWS event
stream (built here with the mock provider's encoder). The client must get exactly the bytes
Bedrock sent, whatever the gateway reads of them.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.aws_eventstream import encode_event, encode_exception, encode_message
from extproc.context import Usage
from extproc.translators.base import counts_so_far, reported_service_tier, stream_failure
from extproc.translators.bedrock_bedrock import ConverseReader, ConverseStreamReader, converse_usage
from extproc.translators.openai_bedrock_stream import read_usage

USAGE = {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17}
CACHED_USAGE = {
    "inputTokens": 10,
    "outputTokens": 5,
    "totalTokens": 165,
    "cacheReadInputTokens": 100,
    "cacheWriteInputTokens": 50,
}
# Claude on Bedrock splits its cache writes by TTL; the 1-hour ones are billed higher.
ONE_HOUR_USAGE = {
    **CACHED_USAGE,
    "cacheDetails": [{"ttl": "5m", "inputTokens": 20}, {"ttl": "1h", "inputTokens": 30}],
}
MALFORMED_USAGES: list[Any] = [
    None,
    "12 tokens",
    [12, 5],
    {},
    {"inputTokens": "12", "outputTokens": 5},
    {"inputTokens": 12, "outputTokens": "5"},
    {"inputTokens": -12, "outputTokens": 5},
    {"inputTokens": 12, "outputTokens": -5},
    {"inputTokens": True, "outputTokens": 5},
    {"inputTokens": 12, "outputTokens": False},
    {"inputTokens": 12.5, "outputTokens": 5},
    {"inputTokens": 12, "outputTokens": 5, "cacheReadInputTokens": -100},
    {"inputTokens": 12, "outputTokens": 5, "cacheWriteInputTokens": "50"},
    {"inputTokens": 12, "outputTokens": 5, "cacheReadInputTokens": True},
]


def converse_answer(usage: Any = USAGE, tier: Any = None) -> bytes:
    answer: dict[str, Any] = {
        "output": {"message": {"role": "assistant", "content": [{"text": "Paris."}]}},
        "stopReason": "end_turn",
        "usage": usage,
        "metrics": {"latencyMs": 231},
    }
    if tier is not None:
        answer["serviceTier"] = {"type": tier}
    return orjson.dumps(answer)


def event(name: str, payload: dict[str, Any]) -> bytes:
    return encode_event(name, orjson.dumps(payload))


def text_events(*texts: str) -> bytes:
    deltas = b"".join(
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}})
        for text in texts
    )
    return (
        event("messageStart", {"role": "assistant"})
        + deltas
        + event("contentBlockStop", {"contentBlockIndex": 0})
        + event("messageStop", {"stopReason": "end_turn"})
    )


def metadata(usage: Any = USAGE, tier: Any = None) -> bytes:
    payload: dict[str, Any] = {"usage": usage, "metrics": {"latencyMs": 231}}
    if tier is not None:
        payload["serviceTier"] = {"type": tier}
    return event("metadata", payload)


def exception(name: str, message: str) -> bytes:
    return encode_exception(name, orjson.dumps({"message": message}))


STREAM = text_events("The capital ", "of France ", "is Paris.") + metadata(CACHED_USAGE)


def through(reader: ConverseReader | ConverseStreamReader, pieces: list[bytes]) -> bytes:
    """What the client receives when the provider's answer arrives in these pieces."""
    sent: list[bytes] = []
    for index, piece in enumerate(pieces):
        replaced = reader.feed(piece, index == len(pieces) - 1)
        sent.append(piece if replaced is None else replaced)
    return b"".join(sent)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({cut % (len(data) + 1) for cut in cuts}), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def corrupted(data: bytes, at: int) -> bytes:
    broken = bytearray(data)
    broken[at] ^= 0xFF
    return bytes(broken)


# --- a JSON answer ---------------------------------------------------------------------------


def test_an_answer_reaches_the_client_unchanged_and_its_usage_is_read() -> None:
    body = converse_answer()
    reader = ConverseReader()
    assert through(reader, [body[:40], body[40:]]) == body
    assert reader.usage == Usage(12, 5, 17)
    assert reader.answer == orjson.loads(body)
    # Converse names no model in its answer, and the provider's status stands.
    assert reader.response_model is None
    assert reader.status is None


def test_an_answer_with_cache_counts_bills_them_within_the_prompt() -> None:
    reader = ConverseReader()
    through(reader, [converse_answer(CACHED_USAGE)])
    # inputTokens counts only the uncached part: the prompt is all the model read.
    assert reader.usage == Usage(160, 5, 165, cached_tokens=100, cache_write_tokens=50)


def test_an_answer_with_one_hour_cache_writes_keeps_them_for_the_bill() -> None:
    reader = ConverseReader()
    through(reader, [converse_answer(ONE_HOUR_USAGE)])
    assert reader.usage == Usage(
        160, 5, 165, cached_tokens=100, cache_write_tokens=50, cache_write_1h_tokens=30
    )


@pytest.mark.parametrize("usage", [USAGE, CACHED_USAGE, ONE_HOUR_USAGE])
def test_usage_reads_as_the_openai_to_bedrock_translator_reads_it(usage: dict[str, Any]) -> None:
    # One request costs the same whichever API the client spoke to reach Bedrock.
    found = read_usage(usage)
    assert found is not None
    assert converse_usage(usage) == found[0]


@pytest.mark.parametrize("tier", ["flex", "priority", "default", "reserved"])
def test_the_tier_that_served_an_answer_prices_it(tier: str) -> None:
    reader = ConverseReader()
    through(reader, [converse_answer(tier=tier)])
    assert reported_service_tier(reader) == tier


@pytest.mark.parametrize("tier", [None, "", "FLEX", 3, "x" * 40])
def test_an_answer_without_a_readable_tier_names_none(tier: Any) -> None:
    reader = ConverseReader()
    through(reader, [converse_answer(tier=tier)])
    assert reported_service_tier(reader) is None


@pytest.mark.parametrize("usage", MALFORMED_USAGES)
def test_malformed_usage_in_an_answer_reads_as_none(usage: Any) -> None:
    body = converse_answer(usage)
    reader = ConverseReader()
    assert through(reader, [body]) == body
    assert reader.usage is None


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'{"output": '])
def test_an_unreadable_answer_still_reaches_the_client_as_it_came(body: bytes) -> None:
    reader = ConverseReader()
    assert through(reader, [body]) == body
    assert reader.usage is None
    assert reader.status is None


# --- a stream ----------------------------------------------------------------------------------


def test_a_stream_reaches_the_client_unchanged_and_its_metadata_is_read() -> None:
    reader = ConverseStreamReader()
    assert through(reader, [STREAM]) == STREAM
    assert reader.usage == Usage(160, 5, 165, cached_tokens=100, cache_write_tokens=50)
    assert reader.response_model is None
    assert reader.status is None
    assert stream_failure(reader) is None


def test_a_stream_split_at_any_byte_reads_the_same() -> None:
    expected = Usage(160, 5, 165, cached_tokens=100, cache_write_tokens=50)
    for cut in range(len(STREAM) + 1):
        reader = ConverseStreamReader()
        assert through(reader, [STREAM[:cut], STREAM[cut:]]) == STREAM
        assert reader.usage == expected, cut
        assert stream_failure(reader) is None


@given(st.lists(st.integers(min_value=0, max_value=100_000), max_size=24))
def test_a_stream_in_many_pieces_reads_the_same(cuts: list[int]) -> None:
    reader = ConverseStreamReader()
    assert through(reader, split_at(STREAM, cuts)) == STREAM
    assert reader.usage == Usage(160, 5, 165, cached_tokens=100, cache_write_tokens=50)


def test_a_streams_one_hour_cache_writes_are_read() -> None:
    reader = ConverseStreamReader()
    through(reader, [text_events("Hi.") + metadata(ONE_HOUR_USAGE)])
    assert reader.usage is not None
    assert reader.usage.cache_write_1h_tokens == 30


def test_the_tier_metadata_names_prices_the_stream() -> None:
    reader = ConverseStreamReader()
    through(reader, [text_events("Hi.") + metadata(tier="flex")])
    assert reported_service_tier(reader) == "flex"


def test_a_stream_cut_before_metadata_is_priced_at_the_tier_asked_for() -> None:
    # Bedrock serves flex as asked once it accepted the request (it refuses a tier it
    # lacks before the stream starts); reserved capacity may overflow to the standard tier.
    flex = ConverseStreamReader(asked_tier="flex")
    through(flex, [text_events("Hi.")])
    assert reported_service_tier(flex) == "flex"
    reserved = ConverseStreamReader(asked_tier="reserved")
    through(reserved, [text_events("Hi.")])
    assert reported_service_tier(reserved) is None


def test_metadata_replaces_the_tier_asked_for_even_with_none() -> None:
    reader = ConverseStreamReader(asked_tier="priority")
    through(reader, [text_events("Hi.") + metadata()])
    assert reported_service_tier(reader) is None


def test_a_stream_cut_before_metadata_has_no_usage_and_no_failure() -> None:
    stream = text_events("The capital ", "of France")
    reader = ConverseStreamReader()
    assert through(reader, [stream, stream[:0]]) == stream
    assert reader.usage is None
    # Not a provider failure: the gateway estimates it as any stream cut short, and
    # Bedrock, which reports usage last, had counted nothing by then.
    assert stream_failure(reader) is None
    assert counts_so_far(reader) is None


def test_a_stream_ending_inside_a_frame_has_no_usage() -> None:
    stream = text_events("Hi.") + metadata()
    reader = ConverseStreamReader()
    # The frame the body ended inside of is dropped (sent, botocore would have read past
    # it); messageStop had come, so the answer is whole, as without metadata.
    assert through(reader, [stream[:-3]]) == stream[: -len(metadata())]
    assert reader.usage is None


@pytest.mark.parametrize("usage", MALFORMED_USAGES)
def test_malformed_usage_in_metadata_reads_as_none(usage: Any) -> None:
    stream = text_events("Hi.") + metadata(usage)
    reader = ConverseStreamReader()
    assert through(reader, [stream]) == stream
    assert reader.usage is None
    assert stream_failure(reader) is None


def test_only_metadata_is_read_of_the_events() -> None:
    # Text deltas are passed without being parsed (every chunk of every stream goes
    # through here): one Bedrock would never send, with a payload that is not JSON,
    # changes nothing the gateway reads.
    odd = encode_event("contentBlockDelta", b"{not json")
    stream = text_events("Hi.") + odd + metadata()
    reader = ConverseStreamReader()
    assert through(reader, [stream]) == stream
    assert reader.usage == Usage(12, 5, 17)
    assert stream_failure(reader) is None


# --- failures inside a stream ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code", "error_type"),
    [
        ("throttlingException", "ThrottlingException", "rate_limit_error"),
        ("modelStreamErrorException", "ModelStreamErrorException", "upstream_error"),
        ("validationException", "ValidationException", "invalid_request_error"),
        ("internalServerException", "InternalServerException", "upstream_error"),
        ("serviceUnavailableException", "ServiceUnavailableException", "service_unavailable"),
    ],
)
def test_an_exception_frame_is_recorded_as_the_providers_failure(
    name: str, code: str, error_type: str
) -> None:
    message = "Too many tokens, please wait before trying again."
    stream = text_events("The capital ") + exception(name, message)
    reader = ConverseStreamReader()
    assert through(reader, split_at(stream, [len(stream) - 7])) == stream
    failure = stream_failure(reader)
    assert failure is not None and failure.error is not None
    assert failure.error.code == code
    assert failure.error.error_type == error_type
    assert failure.error.message == message
    # Bedrock reports usage last: nothing was counted, the gateway estimates.
    assert failure.prompt_tokens is None and failure.completion_tokens is None
    assert reader.usage is None


def test_metadata_after_an_exception_is_not_taken_for_usage() -> None:
    stream = text_events("Hi.") + exception("modelStreamErrorException", "boom") + metadata()
    reader = ConverseStreamReader()
    assert through(reader, [stream]) == stream
    assert reader.usage is None
    assert stream_failure(reader) is not None


def test_an_exception_without_a_message_still_names_itself() -> None:
    stream = text_events("Hi.") + encode_exception("throttlingException", b"")
    reader = ConverseStreamReader()
    through(reader, [stream])
    failure = stream_failure(reader)
    assert failure is not None and failure.error is not None
    assert failure.error.code == "ThrottlingException"
    assert "ThrottlingException" in failure.error.message


def test_an_error_frame_is_recorded_as_the_providers_failure() -> None:
    error = encode_message(
        {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "boom"},
        b"",
    )
    stream = text_events("Hi.") + error
    reader = ConverseStreamReader()
    assert through(reader, [stream]) == stream
    failure = stream_failure(reader)
    assert failure is not None and failure.error is not None
    assert (failure.error.code, failure.error.message) == ("InternalFailure", "boom")
    assert reader.usage is None


def test_a_corrupt_frame_is_passed_on_and_recorded_as_a_failure() -> None:
    stream = text_events("The capital ", "of France ") + metadata()
    # A byte of the second frame's payload: its message CRC no longer matches.
    second_frame = struct.unpack("!I", stream[:4])[0]
    broken = corrupted(stream, second_frame + 20)
    reader = ConverseStreamReader()
    # The client's SDK rejects the frame itself; the gateway changes no byte.
    assert through(reader, split_at(broken, [second_frame + 30, len(broken) - 5])) == broken
    failure = stream_failure(reader)
    assert failure is not None and failure.error is not None
    assert failure.error.error_type == "upstream_error"
    assert failure.error.message == "the provider's event stream could not be decoded"
    # The metadata that followed can no longer be trusted (nor found): no usage.
    assert reader.usage is None


def test_a_corrupt_prelude_is_recorded_as_a_failure() -> None:
    broken = corrupted(STREAM, 2)  # the first frame's total length
    reader = ConverseStreamReader()
    assert through(reader, [broken[:10], broken[10:]]) == broken
    assert stream_failure(reader) is not None
    assert reader.usage is None


def test_metadata_whose_payload_is_not_json_is_a_failure() -> None:
    stream = text_events("Hi.") + encode_event("metadata", b'{"usage": ')
    reader = ConverseStreamReader()
    assert through(reader, [stream]) == stream
    assert stream_failure(reader) is not None
    assert reader.usage is None

"""InvokeModel with Claude's body on a Bedrock Runtime route: which paths name it, the
route's twin that reads the body as a Messages call, and the stream passed through
while it is read for usage."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from extproc.aws_eventstream import encode_exception
from extproc.config.loader import ConfigError, load_config
from extproc.config.model import RouteApi
from extproc.converse_api import operation, operation_api
from extproc.runtime import Route
from extproc.stages.routing import operation_route
from extproc.translators.base import stream_failure
from extproc.translators.bedrock_invoke import InvokeStreamReader
from tests.unit.test_anthropic_bedrock import EVENTS, chunk

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"/model/{quote(HAIKU, safe='')}/invoke", (HAIKU, False)),
        ("/model/haiku/invoke-with-response-stream", ("haiku", True)),
        ("/team/model/haiku/invoke?x=1", ("haiku", False)),
    ],
)
def test_invoke_paths_name_the_model_and_whether_it_streams(
    path: str, expected: tuple[str, bool]
) -> None:
    assert operation(path) == expected
    assert operation_api(path) is RouteApi.BEDROCK_INVOKE


def test_converse_paths_keep_the_routes_api_and_counts_get_their_own() -> None:
    assert operation_api("/model/haiku/converse") is None
    assert operation_api("/model/haiku/converse-stream") is None
    assert operation_api("/model/haiku/count-tokens") is RouteApi.BEDROCK_COUNT_TOKENS
    assert operation("/model/haiku/count-tokens") == ("haiku", False)


def test_the_invoke_twin_keeps_everything_of_its_route_but_the_api() -> None:
    route = Route("bedrock", RouteApi.BEDROCK_CONVERSE, None, prefix="/model", provider="b")
    twin = operation_route(route, RouteApi.BEDROCK_INVOKE)
    assert twin.api is RouteApi.BEDROCK_INVOKE
    assert (twin.name, twin.prefix, twin.provider) == ("bedrock", "/model", "b")
    assert operation_route(route, RouteApi.BEDROCK_INVOKE) is twin  # made once per route


def test_a_route_cannot_be_declared_with_the_invoke_api(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "routes:\n  - name: invoke\n    path_prefix: /model\n    api: bedrock_invoke\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert "bedrock_converse" in str(refused.value)


def test_the_stream_passes_through_unchanged_and_its_usage_is_read() -> None:
    reader = InvokeStreamReader()
    frames = [chunk(event) for event in EVENTS]
    for frame in frames[:-1]:
        assert reader.feed(frame, False) is None
        assert not reader.terminal_event_read
    assert reader.feed(frames[-1], True) is None
    assert reader.terminal_event_read
    usage = reader.usage
    assert usage is not None
    # Claude's input plus its cache reads, and the output of message_delta.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (15, 2, 3)
    assert reader.generated_chars == len("Hello there")
    assert stream_failure(reader) is None


def test_frames_cut_anywhere_are_read_the_same() -> None:
    stream = b"".join(chunk(event) for event in EVENTS)
    reader = InvokeStreamReader()
    sent = b""
    for start in range(0, len(stream), 7):
        part = stream[start : start + 7]
        out = reader.feed(part, start + 7 >= len(stream))
        sent += part if out is None else out
    # The frames as they came, each once whole (a frame's start waits for its end).
    assert sent == stream
    assert reader.usage is not None and reader.usage.completion_tokens == 2


def test_an_exception_frame_is_the_streams_failure_and_passes_on() -> None:
    reader = InvokeStreamReader()
    reader.feed(chunk(EVENTS[0]) + chunk(EVENTS[2]), False)
    broken = encode_exception("throttlingException", b'{"message": "slow down"}')
    assert reader.feed(broken, True) is None
    failure = stream_failure(reader)
    assert failure is not None and failure.error is not None
    assert "slow down" in failure.error.message
    assert failure.error.code == "ThrottlingException"  # as the client's SDK raises it
    # What Claude had reported by then is kept for the bill.
    assert failure.prompt_tokens == 15
    assert not reader.terminal_event_read


def test_a_stream_that_ends_before_message_stop_is_not_whole() -> None:
    reader = InvokeStreamReader()
    reader.feed(b"".join(chunk(event) for event in EVENTS[:4]), True)
    assert not reader.terminal_event_read
    assert reader.usage is None
    assert reader.generated_chars == len("Hello there")

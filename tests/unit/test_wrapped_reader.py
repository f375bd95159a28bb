"""A reader in front of another (the credential scrub, the decompression) shows the stages
the inner reader's attributes, read at the moment they ask, and None for one it lacks."""

from __future__ import annotations

from typing import Any

from extproc.context import Usage
from extproc.translators.base import (
    ProviderStreamError,
    StreamFailure,
    WrappedReader,
    stream_failure,
)

# Every attribute a stage reads of a reader with ``getattr(reader, name, None)``.
OPTIONAL = (
    "answer",
    "counted_prompt",
    "counted_usage",
    "counts_so_far",
    "error",
    "failure",
    "finish_reason",
    "generated_chars",
    "inference_geo",
    "response_id",
    "server_tool_tally",
    "service_tier",
    "tool_call_tally",
    "unwrapped",
)


class Inner:
    """A stream reader with none of the optional attributes until it sets them."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        return None


class OwnCount(WrappedReader):
    """A wrapper that keeps a value of its own, as the decompression keeps its count."""

    def __init__(self, reader: Any) -> None:
        super().__init__(reader)
        self.generated_chars = 7
        self.too_large = False


def test_an_attribute_the_inner_reader_lacks_reads_as_none() -> None:
    wrapper = WrappedReader(Inner())
    for name in OPTIONAL:
        assert getattr(wrapper, name, None) is None, name
    assert stream_failure(wrapper) is None


def test_what_the_inner_reader_sets_mid_stream_is_read_through_the_wrapper() -> None:
    inner = Inner()
    wrapper = WrappedReader(inner)
    assert stream_failure(wrapper) is None
    failure = StreamFailure(ProviderStreamError("overloaded", error_type="server_error", code=None))
    values: dict[str, Any] = {name: object() for name in OPTIONAL}
    values["failure"] = failure
    for name, value in values.items():
        setattr(inner, name, value)
    for name, value in values.items():
        assert getattr(wrapper, name, None) is value, name
    assert stream_failure(wrapper) is failure
    # The three the wrapper always had: read and written through.
    wrapper.usage = Usage(prompt_tokens=3, completion_tokens=4)
    assert inner.usage == Usage(prompt_tokens=3, completion_tokens=4)


def test_any_other_attribute_is_still_the_inner_readers_and_private_ones_are_not() -> None:
    inner = Inner()
    wrapper = WrappedReader(inner)
    inner.terminal_event_read = True  # type: ignore[attr-defined]
    assert getattr(wrapper, "terminal_event_read", False) is True
    assert getattr(wrapper, "too_large", False) is False
    assert getattr(wrapper, "_hidden", None) is None
    inner._hidden = 1  # type: ignore[attr-defined]
    assert getattr(wrapper, "_hidden", None) is None


def test_a_wrapper_that_keeps_its_own_value_shows_it() -> None:
    inner = Inner()
    inner.generated_chars = 99  # type: ignore[attr-defined]
    wrapper = OwnCount(inner)
    assert wrapper.generated_chars == 7
    wrapper.generated_chars = 8
    assert getattr(wrapper, "generated_chars", None) == 8
    assert wrapper.too_large is False

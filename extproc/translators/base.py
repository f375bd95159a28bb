"""The contract every response translator keeps: bytes in, bytes (or nothing) out, usage read.

A stream translator may also expose ``failure``: a ``StreamFailure`` once the provider
sent an error inside a stream whose 200 had already left (OpenAI's ``{"error": ...}``
event, Anthropic's ``event: error``, a Bedrock exception message). The prompt was
processed and part of the answer delivered, so the gateway charges the request: what
the provider reported before failing is kept, the rest is estimated
(``stages.partial_usage``). Read it with ``stream_failure``, which also serves
translators that have no such attribute (buffered answers, error bodies).

A translator that can read which service tier served the answer (OpenAI's
``service_tier``, Anthropic's ``usage.service_tier``) exposes it as ``service_tier``,
read where usage is read; ``reported_service_tier`` reads it from any translator (None
from those that have none, or before the provider named one). It prices the request
(``chargeback.pricing``). One that can read the inference geography the provider ran
the request in (Anthropic's ``usage.inference_geo``) exposes it as ``inference_geo``,
read the same way (``reported_inference_geo``); it prices the request too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

import orjson

from extproc.context import ImageGeneration, Usage
from extproc.errors import BadRequestError, GatewayError

# Provider messages are short; a cap keeps a misbehaving proxy's page out of the log line.
MAX_PROVIDER_MESSAGE = 2000
# What every client is told, in its API's shape, when the provider's stream ended before
# its last event (a proxy or an upstream closing a cut stream as if whole): one text for
# every translation, logged with the code INVALID_UPSTREAM_RESPONSE, so that an operator
# finds the same cut under one message and code whichever API the client spoke.
STREAM_ENDED_EARLY = "the provider's stream ended before it was complete"
INVALID_UPSTREAM_RESPONSE = "invalid_upstream_response"
# What an event stream's client is told, and the log says, when a frame of it fails its
# checksum or framing (Bedrock's AWS event streams), logged with the same code.
UNDECODABLE_STREAM = "the provider's event stream could not be decoded"
# A service tier as providers name it ("default", "flex", "priority", "standard"): what
# else a provider (or a proxy in front of it) sends is not a tier the price table can
# name, and must not grow the log line.
_SERVICE_TIER = re.compile(r"[a-z][a-z0-9_]{0,31}")


# A provider's 400 for a prompt over the model's context window, in the words providers
# use: Anthropic's ("prompt is too long: 208310 tokens > 200000 maximum", "input length and
# `max_tokens` exceed context limit: ..."), Bedrock's ("Input is too long for requested
# model."; Claude on Bedrock passes Anthropic's on), and OpenAI-compatible servers' ("This
# model's maximum context length is ...").
_CONTEXT_OVERFLOW = re.compile(
    r"prompt is too long|exceed context limit|input is too long|maximum context length",
    re.IGNORECASE,
)
# OpenAI's code for it, which agents read (not the words) to shorten the conversation.
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


def overflows_context(message: str) -> bool:
    """Whether a provider's 400 message says the prompt is over the context window."""
    return _CONTEXT_OVERFLOW.search(message) is not None


def refuse_forced_call_without_tools(body: dict[str, Any]) -> None:
    """An OpenAI chat request that forces a tool call (``tool_choice`` ``required`` or a
    named function) without declaring a tool: OpenAI refuses it, and a translation that
    dropped the choice would answer in text a client waiting for a call."""
    choice = body.get("tool_choice")
    forced = choice == "required" or isinstance(choice, dict)
    if forced and not body.get("tools"):
        raise BadRequestError(
            "tool_choice forces a tool call, and the request declares no tools: add them to"
            " 'tools', or leave tool_choice out",
            param="tool_choice",
        )


def service_tier_of(value: Any) -> str | None:
    """A reported service tier, or None for an absent or malformed one."""
    if isinstance(value, str) and _SERVICE_TIER.fullmatch(value):
        return value
    return None


def reported_service_tier(translator: object) -> str | None:
    """The service tier a response translator read from the provider's answer, if any."""
    return service_tier_of(getattr(translator, "service_tier", None))


def inference_geo_of(value: Any) -> str | None:
    """A reported inference geography ("us", "global"), or None for an absent or malformed
    one: named as tiers are, so a proxy's odd value cannot grow the log line."""
    return service_tier_of(value)


def reported_inference_geo(translator: object) -> str | None:
    """The inference geography a response translator read from the provider's answer."""
    return inference_geo_of(getattr(translator, "inference_geo", None))


class ResponseTranslator(Protocol):
    """Consumes one response body, chunk by chunk, and reports what it saw."""

    usage: Usage | None
    response_model: str | None
    # The status the client gets instead of the provider's, when a buffered answer
    # could not be translated and an error body replaced it (502); None otherwise.
    status: int | None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        """Return the bytes to send the client instead of ``chunk``, or None to pass it as is."""
        ...


class _Forwarded:
    """An attribute a wrapper reads from its inner reader: one the stages read with
    ``getattr(reader, name, None)``, None where the inner reader has none.

    Through ``__getattr__`` alone each such read first fails the wrapper's own lookup,
    and a read of one the inner reader lacks raises twice more: 0.8 to 1.3 us a read,
    and a stream's every chunk makes several (its failure, its text so far, its
    unwrapped events). A non-data descriptor, so a wrapper that sets the attribute on
    itself (an instance value) or defines it still shadows it."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, wrapper: WrappedReader | None, owner: type | None = None) -> Any:
        if wrapper is None:
            return self
        return getattr(wrapper._reader, self._name, None)


class WrappedReader:
    """A reader in front of another (``_reader``): what the stages read of it (usage,
    model, status, and any other attribute) is the inner reader's."""

    # The optional attributes of a reader that the stages read with a None default,
    # answered straight from the inner reader (``_Forwarded``); any other goes through
    # ``__getattr__``.
    answer = _Forwarded()
    counted_prompt = _Forwarded()
    counted_usage = _Forwarded()
    counts_so_far = _Forwarded()
    error = _Forwarded()
    failure = _Forwarded()
    finish_reason = _Forwarded()
    generated_chars = _Forwarded()
    inference_geo = _Forwarded()
    response_id = _Forwarded()
    server_tool_tally = _Forwarded()
    service_tier = _Forwarded()
    terminal_event_read = _Forwarded()
    tool_call_tally = _Forwarded()
    unwrapped = _Forwarded()

    def __init__(self, reader: ResponseTranslator) -> None:
        self._reader = reader

    @property
    def usage(self) -> Usage | None:
        return self._reader.usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._reader.usage = value

    @property
    def response_model(self) -> str | None:
        return self._reader.response_model

    @response_model.setter
    def response_model(self, value: str | None) -> None:
        self._reader.response_model = value

    @property
    def status(self) -> int | None:
        return self._reader.status

    @status.setter
    def status(self, value: int | None) -> None:
        self._reader.status = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._reader, name)


class ProviderStreamError(GatewayError):
    """A provider's error event inside a stream, with the OpenAI type and code the client
    was shown. It never becomes a status: the stream's 200 had already left."""

    status = 502

    def __init__(self, message: str, *, error_type: str, code: str | None) -> None:
        super().__init__(message[:MAX_PROVIDER_MESSAGE], code=code)
        self.error_type = error_type

    @classmethod
    def from_openai(cls, error: Any, unnamed: str = "the provider's stream failed") -> Self:
        """The error object of an OpenAI-shaped error event; odd fields read as unknown
        (``unnamed``: the message of one that gives none)."""
        found = error if isinstance(error, dict) else {}
        message, kind, code = found.get("message"), found.get("type"), found.get("code")
        return cls(
            message if isinstance(message, str) and message else unnamed,
            error_type=kind if isinstance(kind, str) and kind else "upstream_error",
            code=str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None,
        )


@dataclass(frozen=True, slots=True)
class StreamFailure:
    """A provider's error inside a stream that had started, and what it had reported by then.

    ``error`` is the error as an OpenAI client is told it; None for the counts of a
    stream that was cut, not failed (``counts_so_far``). The counts are the provider's
    own, None when it had reported none: Anthropic's ``message_start`` carries the prompt
    side (cache writes and their 1-hour part included), a ``message_delta`` the output
    and the server tool requests so far; an OpenAI-compatible provider's running count
    (Gemini, vLLM) the prompt, cache hits and output so far; Bedrock and OpenAI itself
    report usage last. ``whole``: the counts are the provider's count of the whole answer
    (the usage of a Responses API ``response.failed``), or a running count carried by the
    last event of a stream its provider ended early, after which no text came: billed as
    they are, not a count so far that the text streamed after it may exceed. ``began``:
    False when the stream failed before the provider began its answer (no Anthropic
    ``message_start``; an OpenAI-compatible error as the first data event; a Bedrock
    exception as the first frame): the streamed form of an error status (Anthropic's
    ``overloaded_error`` first is its 529, Bedrock's ``throttlingException`` its 429),
    charged nothing as that status is (``partial_usage``). A failure of the gateway's
    own (a frame it cannot decode, an event too long) always began: what came may have
    been the answer.
    The audio and image parts of the counts (Gemini's modality counts, OpenAI's
    ``audio_tokens``) are kept with them, as every part the price table prices apart is: a
    prompt of speech, or a picture, cut short is billed at the price it was counted at
    (``reported``).
    """

    error: GatewayError | None
    prompt_tokens: int | None = None
    cached_tokens: int = 0
    completion_tokens: int | None = None
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    # Requests of the provider's server tools reported by then, by tool (billed per request).
    server_tool_requests: dict[str, int] = field(default_factory=dict)
    whole: bool = False
    began: bool = True
    # Of the prompt, of its cache hits and of the output, the audio tokens reported.
    audio_tokens: int = 0
    cached_audio_tokens: int = 0
    audio_output_tokens: int = 0
    # Of the output, the image tokens reported (Gemini's image models).
    image_output_tokens: int = 0
    # Of the prompt, the image tokens reported (OpenAI's GPT Image models).
    image_tokens: int = 0
    # The image generation tool's pictures, part of the counts (a Responses API
    # response.failed's tool_usage): billed at the image model's prices.
    image_generation: ImageGeneration | None = None

    @classmethod
    def reported(
        cls,
        error: GatewayError | None,
        counts: Usage,
        *,
        output_counted: bool = True,
        whole: bool = False,
    ) -> Self:
        """The failure of a stream whose provider had reported ``counts`` by then, each
        part the bill prices apart kept (cache reads and writes, the 1-hour writes, the
        audio, the images, the server tools' requests). ``output_counted``: False when the report
        counted the prompt alone (its completion is then estimated)."""
        return cls(
            error,
            prompt_tokens=counts.prompt_tokens,
            cached_tokens=counts.cached_tokens,
            completion_tokens=counts.completion_tokens if output_counted else None,
            cache_write_tokens=counts.cache_write_tokens,
            cache_write_1h_tokens=counts.cache_write_1h_tokens,
            server_tool_requests=dict(counts.server_tool_requests),
            whole=whole,
            audio_tokens=counts.audio_tokens,
            cached_audio_tokens=counts.cached_audio_tokens,
            audio_output_tokens=counts.audio_output_tokens if output_counted else 0,
            image_output_tokens=counts.image_output_tokens if output_counted else 0,
            image_tokens=counts.image_tokens,
            image_generation=counts.image_generation if output_counted else None,
        )


def stream_failure(translator: object) -> StreamFailure | None:
    """The provider failure a stream translator met, if it met one."""
    found = getattr(translator, "failure", None)
    return found if isinstance(found, StreamFailure) else None


def failure_unreadable(translator: object) -> bool:
    """Whether the client of a stream translator cannot read its failure in the body it
    gets (raw audio decoded from events): its response must end abnormally instead
    (``PhaseOutput.reset``). False for every reader whose client reads an error event."""
    return getattr(translator, "failure_unreadable", False) is True


def counts_so_far(translator: object) -> StreamFailure | None:
    """What a stream's provider had reported when the stream was cut (the client left),
    with no error; None from a translator that keeps no counts before usage is whole
    (only Anthropic reports part of it early, in ``message_start``)."""
    read = getattr(translator, "counts_so_far", None)
    found = read() if callable(read) else None
    return found if isinstance(found, StreamFailure) else None


def counted_prompt(translator: object) -> Usage | None:
    """The prompt the provider counted before its answer's body, when what it generated
    is unknown: Bedrock's ``X-Amzn-Bedrock-Input-Token-Count`` (with its cache's reads and
    writes) on an InvokeModel answer without its output count. It is what the provider
    bills for the prompt, so a bill estimated for want of the output starts from it, not
    from the quota's estimate. None from every other translator."""
    found = getattr(translator, "counted_prompt", None)
    return found if isinstance(found, Usage) else None


def renamed(body: dict[str, Any], upstream_model: str) -> dict[str, Any] | None:
    """A pass-through body under the provider's name for the model; None when the
    client's body can go as it is (no re-serialising)."""
    if body.get("model") == upstream_model:
        return None
    body["model"] = upstream_model
    return body


class BufferedBodyReader:
    """A buffered (non-streaming) JSON answer: reads usage and model, passes bytes through.

    Subclasses name how their API reports usage in ``read_usage``.
    """

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None  # passed through as it is
        # The tier that served the answer, as the provider reported it (prices it).
        self.service_tier: str | None = None
        # Where the provider ran the request, as its answer says (prices it too).
        self.inference_geo: str | None = None
        # The parsed answer, for response guards (so the body is parsed once).
        self.answer: Any = None
        self._parts: list[bytes] = []

    @staticmethod
    def read_usage(value: Any) -> Usage | None:
        raise NotImplementedError

    @staticmethod
    def read_service_tier(answer: dict[str, Any]) -> str | None:
        """The service tier the answer reports; APIs that report one say where."""
        return None

    @staticmethod
    def read_inference_geo(answer: dict[str, Any]) -> str | None:
        """The inference geography the answer reports; APIs that report one say where."""
        return None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        self._parts.append(chunk)
        if end_of_stream:
            body = b"".join(self._parts) if len(self._parts) > 1 else self._parts[0]
            self._parts = []
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None
            self.answer = parsed
            if isinstance(parsed, dict):
                self.usage = self.read_usage(parsed.get("usage"))
                self.service_tier = self.read_service_tier(parsed)
                self.inference_geo = self.read_inference_geo(parsed)
                model = parsed.get("model")
                self.response_model = model if isinstance(model, str) else None
        return None

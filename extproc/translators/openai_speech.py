"""OpenAI's text-to-speech answers (``/v1/audio/speech``).

tts-1 and tts-1-hd answer the audio file's bytes alone (``audio/mpeg`` for mp3), which
carry no usage: they are billed per character of the request's ``input``, which the
gateway counted (``speech_api.characters``). ``SpeechAudioReader`` passes every byte
through as it came and, once the answer ended whole, reports those characters as its
usage; an answer cut before its end reports nothing, and is charged the quota's estimate
(the same characters) as a cut stream is (``stages.partial_usage``).

gpt-4o-mini-tts is billed by tokens, reported only in an event stream: the gateway asks
for one (``stream_format: sse``) whatever the client asked. ``SpeechEventReader`` reads
its ``speech.audio.delta`` events (``audio``: base64) and the ``speech.audio.done``
event's ``usage`` (``input_tokens``, ``output_tokens``, ``total_tokens``); for a client
that asked for the raw audio it writes the audio the deltas carry, decoded, in their
place, so the client reads what OpenAI would have sent it; for one that asked for the
events they pass as they came. A stream cut before its done event (or an answer of a
token model that carries no events) is charged the prompt's estimate and the audio the
quota reserved (``counts_so_far``): the gateway cannot count audio tokens from bytes.

The raw-audio client reads no error event: when the provider's stream fails (its
``error`` event, a delta whose audio is not base64, a body that ends before the done
event), the reader records the failure and says so (``failure_unreadable``), and the
client's response fails (Envoy resets it once its 200 has left) rather than ending as
a whole, short audio file (``PhaseOutput.reset``). After audio that is not base64 the
client gets no more audio, but the reader reads on to the done event, whose usage is
what the provider bills, and records the failure only then (or at the stream's end or
error event, charged the estimate).
"""

from __future__ import annotations

import base64
import binascii

import orjson

from extproc.context import Usage
from extproc.translators.base import (
    INVALID_UPSTREAM_RESPONSE,
    STREAM_ENDED_EARLY,
    ProviderStreamError,
    StreamFailure,
)
from extproc.translators.sse import EVENT_END, EventBuffer, event_data
from extproc.translators.token_counts import token_count

_DELTA = "speech.audio.delta"
_DONE = "speech.audio.done"
_READ_EVENTS = (b'"speech.audio.done"', b'"error"')
NOT_BASE64 = "the provider's stream carried audio that is not base64"


def speech_usage(event: object) -> Usage | None:
    """The usage of a ``speech.audio.done`` event: text in, audio out."""
    usage = event.get("usage") if isinstance(event, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt = token_count(usage.get("input_tokens"))
    completion = token_count(usage.get("output_tokens"))
    if prompt is None or completion is None:
        return None
    return Usage(prompt, completion, prompt + completion, audio_output_tokens=completion)


class SpeechAudioReader:
    """A raw audio answer: passed through. Billed per character (``characters``), its
    usage those characters once it ended whole; of a model billed by tokens (None), no
    usage: charged the estimate (``counts_so_far``)."""

    def __init__(self, characters: int | None, allowance: int = 0) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None
        self.terminal_event_read = False
        # Audio carries no generated text: nothing for the cut stream's estimate to
        # scan for (stages.partial_usage reads this rather than the audio's bytes).
        self.generated_chars = 0
        self._characters = characters
        self._allowance = allowance

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if end_of_stream:
            self.terminal_event_read = True
            if self._characters is not None:
                self.usage = Usage(
                    self._characters,
                    0,
                    self._characters,
                    billable_characters=self._characters,
                )
        return None

    def counts_so_far(self) -> StreamFailure | None:
        """The audio the quota reserved, for an answer of a model billed by tokens that
        reported none."""
        if self._characters is not None:
            return None
        return StreamFailure(
            None, completion_tokens=self._allowance, audio_output_tokens=self._allowance
        )


class SpeechEventReader:
    """A text-to-speech event stream: its done event's usage read; passed through
    (``decode`` False), or its audio decoded for a client that asked for the raw audio."""

    def __init__(self, allowance: int, *, decode: bool) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None
        self.failure: StreamFailure | None = None
        self.terminal_event_read = False
        self.generated_chars = 0  # as SpeechAudioReader's
        self._allowance = allowance
        self._decode = decode
        # The raw-audio client reads no error event: a failure resets its response.
        self.failure_unreadable = decode
        self._began = False
        self._any_bytes = False  # an empty body made no audio: charged nothing
        # The audio broke (a delta not base64): the client hears no more of it, and the
        # failure waits for the done event, whose usage is what the provider bills.
        self._broken = False
        self._events = EventBuffer()

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        complete = self._events.whole_events(chunk, end_of_stream)
        if not self._decode:
            self._began = self._began or b'"speech.audio.delta"' in complete
            if any(marker in complete for marker in _READ_EVENTS):
                for event in complete.split(EVENT_END):
                    if any(marker in event for marker in _READ_EVENTS):
                        self._read_event(event)
            return None
        self._any_bytes = self._any_bytes or bool(chunk)
        audio = []
        for event in complete.split(EVENT_END):
            if self.failure is not None:
                break  # nothing after the failure reaches the client
            if event.strip():
                audio.append(self._read_event(event))
        if self._broken and self.failure is None and (self.terminal_event_read or end_of_stream):
            # Its usage read (the provider's count), or its end come without it (charged
            # the estimate, as a stream cut is): now the client's response fails.
            self._failed(NOT_BASE64)
        if self._broken:
            return b""
        if end_of_stream and not self.terminal_event_read and self.failure is None:
            # Ended cleanly without its done event (a proxy ending a cut stream as if
            # whole): charged as a cut stream, and the client's response fails. An
            # empty body (no byte of an answer) is charged nothing, as an empty success
            # answer on a translated route is.
            self._failed(STREAM_ENDED_EARLY, began=self._any_bytes)
        return b"".join(audio)

    def _read_event(self, event: bytes) -> bytes:
        """Read one event; the audio it carries, decoded."""
        try:
            parsed = orjson.loads(event_data(event))
        except orjson.JSONDecodeError:
            return b""
        if not isinstance(parsed, dict):
            return b""
        kind = parsed.get("type")
        if kind == _DELTA:
            self._began = True
            audio = parsed.get("audio")
            if self._broken:
                return b""
            try:
                if not isinstance(audio, str):
                    raise ValueError(audio)
                return base64.b64decode(audio, validate=True)
            except (binascii.Error, ValueError):
                # A hole in the audio the client could not hear of: the provider's
                # stream is broken, and fails as one once its usage is read.
                self._broken = True
                return b""
        if kind == _DONE:
            self.usage = speech_usage(parsed)
            self.terminal_event_read = True
            return b""
        if kind != "error" and "error" not in parsed:
            return b""
        error = parsed.get("error")
        found = error if isinstance(error, dict) else {**parsed, "type": "server_error"}
        if self._broken:
            self._failed(NOT_BASE64)  # the first failure is the one the client is told
        elif self.failure is None:
            self.failure = StreamFailure(
                ProviderStreamError.from_openai(found),
                began=self._began,
                completion_tokens=self._allowance if self._began else None,
                audio_output_tokens=self._allowance if self._began else 0,
            )
        return b""

    def _failed(self, message: str, *, began: bool = True) -> None:
        """A stream of the provider's the gateway cannot read on: charged as one cut after
        its audio began (what came may have been the answer); nothing when nothing came
        (``began`` False)."""
        self.failure = StreamFailure(
            ProviderStreamError(
                message, error_type="upstream_error", code=INVALID_UPSTREAM_RESPONSE
            ),
            began=began,
            completion_tokens=self._allowance if began else None,
            audio_output_tokens=self._allowance if began else 0,
        )

    def counts_so_far(self) -> StreamFailure | None:
        """A stream cut before its done event: the audio the quota reserved (the gateway
        cannot count audio tokens from the bytes that came), as audio output."""
        return StreamFailure(
            None, completion_tokens=self._allowance, audio_output_tokens=self._allowance
        )

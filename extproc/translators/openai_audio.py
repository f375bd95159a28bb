"""OpenAI's speech-to-text answers (``/v1/audio/transcriptions``, ``/translations``).

The gateway asked the provider for a JSON format that carries the bill
(``audio_api.provider_format``): this reads its usage and, where the client asked for
another format, renders that one from it (``TranscriptionReader``):

- a report of tokens (gpt-4o-transcribe, gpt-4o-mini-transcribe: ``usage.type`` is
  ``tokens``): ``input_tokens`` the prompt, of them ``input_token_details.audio_tokens``
  audio (billed at the audio input price) and the rest text; ``output_tokens`` the
  transcript;
- a report of seconds (whisper-1: ``usage.type`` is ``duration``, or a
  ``verbose_json`` answer's ``duration``, a translation's only count): billed by its
  seconds at the model's per-minute price, and counted as audio prompt tokens, ten a
  second (``audio_api.seconds_as_tokens``); no completion tokens.

The client's ``text`` is the answer's ``text`` and a line end, as OpenAI writes it;
``srt`` and ``vtt`` are its ``segments``, each a numbered (SRT) cue with its start and
end times, as OpenAI writes them; a translation's ``json`` is ``{"text"}``.

A stream (``stream=true``, the gpt-4o transcribe models) passes through as it came:
``transcript.text.delta`` events, then ``transcript.text.done`` with the whole text and
the usage, which this reads (``TranscriptEventReader``); an ``error`` event fails it.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.audio_api import JSON, SRT, TEXT, VTT, seconds_as_tokens
from extproc.context import Usage
from extproc.translators.base import BufferedBodyReader, ProviderStreamError, StreamFailure
from extproc.translators.sse import EVENT_END, EventBuffer, event_data
from extproc.translators.token_counts import token_count

TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
_DONE = "transcript.text.done"
_READ_EVENTS = (b'"transcript.text.done"', b'"error"')


def usage_from_audio(answer: Any) -> Usage | None:
    """The usage a speech-to-text JSON answer (or a stream's done event) reports: its
    ``usage`` of tokens or of seconds, else a ``verbose_json``'s ``duration``."""
    if not isinstance(answer, dict):
        return None
    usage = answer.get("usage")
    if isinstance(usage, dict):
        seconds = usage.get("seconds")
        if usage.get("type") == "duration" or seconds is not None:
            return _duration_usage(seconds)
        return _token_usage(usage)
    return _duration_usage(answer.get("duration"))


def _duration_usage(seconds: Any) -> Usage | None:
    if isinstance(seconds, str):
        try:
            seconds = float(seconds)
        except ValueError:
            return None
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        return None
    if seconds != seconds or seconds == float("inf"):
        return None
    tokens = seconds_as_tokens(float(seconds))
    return Usage(tokens, 0, tokens, audio_tokens=tokens, audio_seconds=float(seconds))


def _token_usage(usage: dict[str, Any]) -> Usage | None:
    prompt = token_count(usage.get("input_tokens"))
    completion = token_count(usage.get("output_tokens"))
    if prompt is None or completion is None:
        return None
    details = usage.get("input_token_details")
    audio = text = None
    if isinstance(details, dict):
        audio = token_count(details.get("audio_tokens"))
        text = token_count(details.get("text_tokens"))
    if audio is None:
        # No audio count: what the text count leaves (all of it when there is none).
        audio = prompt - min(text or 0, prompt)
    return Usage(prompt, completion, prompt + completion, audio_tokens=min(audio, prompt))


def rendered(answer: dict[str, Any], asked: str) -> bytes | None:
    """The answer in the client's format ``asked``; None when it is the provider's own."""
    text = answer.get("text")
    text = text if isinstance(text, str) else ""
    if asked == TEXT:
        return (text + "\n").encode()
    if asked == JSON:
        return orjson.dumps({"text": text})
    if asked in (SRT, VTT):
        return _subtitles(answer, text, srt=asked == SRT).encode()
    return None


def _subtitles(answer: dict[str, Any], text: str, *, srt: bool) -> str:
    """The answer's segments as SRT or WebVTT cues; one cue of the whole text over the
    whole duration when it has none."""
    cues: list[tuple[float, float, str]] = []
    segments = answer.get("segments")
    if isinstance(segments, list):
        for segment in segments:
            if not isinstance(segment, dict):
                continue
            start, end = _seconds(segment.get("start")), _seconds(segment.get("end"))
            said = segment.get("text")
            if start is not None and end is not None and isinstance(said, str):
                cues.append((start, end, said.strip()))
    if not cues and text:
        cues.append((0.0, _seconds(answer.get("duration")) or 0.0, text.strip()))
    lines = [] if srt else ["WEBVTT", ""]
    for index, (start, end, said) in enumerate(cues, 1):
        if srt:
            lines.append(str(index))
        lines.append(f"{_timestamp(start, srt)} --> {_timestamp(end, srt)}")
        lines.extend((said, ""))
    return "\n".join(lines) + "\n"


def _seconds(value: Any) -> float | None:
    """A time in seconds, None when it is none."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _timestamp(seconds: float, srt: bool) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, millis = divmod(rest, 1000)
    mark = "," if srt else "."
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{mark}{millis:03d}"


class TranscriptionReader(BufferedBodyReader):
    """A JSON speech-to-text answer: reads its usage; renders the client's format
    (``render``: text, srt, vtt, or a translation's json) when it asked for another than
    the provider was asked for, else passes the bytes through."""

    @staticmethod
    def read_usage(value: Any) -> Usage | None:
        return usage_from_audio(value)

    def __init__(self, render: str | None = None) -> None:
        super().__init__()
        self._render = render
        # The transcript's characters: what an answer without a count is charged for
        # (``cut_answer``): its ``text``, or the whole body of an answer that is no JSON
        # (a provider that answered text or subtitles whatever format it was asked).
        self.transcript_chars = 0

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        self._parts.append(chunk)
        if not end_of_stream:
            return None
        body = b"".join(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = []
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.transcript_chars = len(body.decode(errors="replace"))
            return None
        if not isinstance(parsed, dict):
            return None
        text = parsed.get("text")
        self.transcript_chars = len(text) if isinstance(text, str) else 0
        self.answer = parsed
        self.usage = usage_from_audio(parsed)
        if self._render is None:
            return None
        return rendered(parsed, self._render)


class TranscriptEventReader:
    """A streamed transcription: reads the done event's usage and an error event, passes
    every byte through as it came."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None
        self.failure: StreamFailure | None = None
        self.terminal_event_read = False
        self._began = False
        self._events = EventBuffer()

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        complete = self._events.whole_events(chunk, end_of_stream)
        if complete:
            self._began = self._began or b"transcript.text." in complete
            if any(marker in complete for marker in _READ_EVENTS):
                for event in complete.split(EVENT_END):
                    if any(marker in event for marker in _READ_EVENTS):
                        self._read_event(event)
        return None

    def _read_event(self, event: bytes) -> None:
        try:
            parsed = orjson.loads(event_data(event))
        except orjson.JSONDecodeError:
            return
        if not isinstance(parsed, dict):
            return
        if parsed.get("type") == _DONE:
            self.usage = usage_from_audio(parsed)
            self.terminal_event_read = True
            return
        if parsed.get("type") != "error" and "error" not in parsed:
            return
        error = parsed.get("error")
        found = error if isinstance(error, dict) else {**parsed, "type": "server_error"}
        if self.failure is None:
            self.failure = StreamFailure(ProviderStreamError.from_openai(found), began=self._began)

    def counts_so_far(self) -> StreamFailure | None:
        """A stream cut before its done event is charged the prompt's estimate (the
        provider reports nothing before it)."""
        return None

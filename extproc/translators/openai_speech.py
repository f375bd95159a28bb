"""OpenAI's text-to-speech answers (``/v1/audio/speech``).

tts-1 and tts-1-hd answer the audio file's bytes alone (``audio/mpeg`` for mp3), which
carry no usage: they are billed per character of the request's ``input``, which the
gateway counted (``speech_api.characters``). ``SpeechAudioReader`` passes every byte
through as it came and, once the answer ended whole, reports those characters as its
usage; an answer cut before its end reports nothing, and is charged the quota's estimate
(the same characters) as a cut stream is (``stages.partial_usage``).
"""

from __future__ import annotations

from extproc.context import Usage


class SpeechAudioReader:
    """A raw audio answer billed per character: passed through, its usage the characters
    once it ended whole."""

    def __init__(self, characters: int) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None
        self.terminal_event_read = False
        # Audio carries no generated text: nothing for the cut stream's estimate to
        # scan for (stages.partial_usage reads this rather than the audio's bytes).
        self.generated_chars = 0
        self._characters = characters

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        if end_of_stream:
            self.usage = Usage(
                self._characters,
                0,
                self._characters,
                billable_characters=self._characters,
            )
            self.terminal_event_read = True
        return None

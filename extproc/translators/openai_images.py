"""OpenAI's Images API answers, passed through from an OpenAI-compatible provider.

The request goes as the client sent it, under the provider's name for the model, to
``<base_url>/images/generations``. The answer passes through unchanged; the gateway
reads its ``usage`` (``openai_image_usage.usage_from_images``: text and image input,
the pictures' tokens), which the price table bills at the model's image prices.

A JSON answer is mostly pictures (a 1536x1024 PNG is megabytes of base64, ``n`` of them
up to 10), and only its last bytes are read, as an embeddings answer's are: OpenAI
writes ``usage`` after ``data``, and the object after the last ``"usage"`` key is parsed
alone. Base64 holds no ``"``, so a picture cannot fake the key. An answer laid out
otherwise is parsed whole up to ``MAX_WHOLE_PARSE`` bytes. Its pictures are counted
(each ``"b64_json"`` key) for an answer without usage, which is charged their allowance
(``stages.cut_answer``).

A stream (``stream: true``) is SSE: ``image_generation.partial_image`` events (the
picture so far, ``partial_images`` of them), then ``image_generation.completed`` with
the picture and the usage; an ``error`` event fails it. An edit's stream
(``/v1/images/edits``) is the same with ``image_edit.`` events. Only the completed and error
events are parsed; the pictures pass untouched. A stream cut after a partial picture,
before its completed event, was drawing: it is charged the pictures' allowance
(``counts_so_far``), as a JSON answer cut in flight is; one cut before any picture, its
prompt.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from extproc.context import Usage
from extproc.translators.base import BufferedBodyReader, ProviderStreamError, StreamFailure
from extproc.translators.openai_embeddings import MAX_WHOLE_PARSE, TAIL_BYTES
from extproc.translators.openai_image_usage import usage_from_images
from extproc.translators.sse import EVENT_END, EventBuffer, event_data

# Two levels of nesting at most: usage's input_tokens_details and output_tokens_details.
_USAGE = re.compile(rb'"usage"\s*:\s*(\{(?:[^{}]|\{[^{}]*\})*\})')
_PICTURE = b'"b64_json"'
# The events worth parsing: the last picture with its usage, or an error.
_READ_EVENTS = re.compile(rb'"type"\s*:\s*"(?:image_(?:generation|edit)\.completed|error)"')
_PARTIAL = re.compile(rb'"image_(?:generation|edit)\.partial_image"')
# A generation's and an edit's last event.
_COMPLETED = frozenset({"image_generation.completed", "image_edit.completed"})


def pictures_counted(translator: object) -> int:
    """The pictures an Images API reader saw (a JSON answer's; 0 from any other)."""
    found = getattr(translator, "pictures", None)
    return found if isinstance(found, int) else 0


class ImagesReader(BufferedBodyReader):
    """A JSON Images API answer: reads its usage from its tail and counts its pictures,
    passes bytes through (the module docstring says why only the tail)."""

    read_usage = staticmethod(usage_from_images)

    def __init__(self) -> None:
        super().__init__()
        self.pictures = 0

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        self._parts.append(chunk)
        if not end_of_stream:
            return None
        body = b"".join(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = []
        self.pictures = body.count(_PICTURE)
        found = _USAGE.findall(body[-TAIL_BYTES:])
        usage = _parsed(found[-1]) if found else None
        if usage is not None:
            self.usage = self.read_usage(usage)
        elif len(body) <= MAX_WHOLE_PARSE:
            # Usage elsewhere, or none: the whole answer (an error in a 200 is read).
            super().feed(body, True)
        return None


def _parsed(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


class ImageEventReader:
    """A streamed Images API answer: reads the completed event's usage and an error
    event, passes every byte through as it came."""

    def __init__(self, allowance: int = 0) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None  # passed through as it is
        # Set when the provider failed the stream (base.StreamFailure).
        self.failure: StreamFailure | None = None
        # The pictures' allowance (images_api.picture_allowance), charged for a stream
        # cut after it began drawing.
        self._allowance = allowance
        self._drawing = False
        # Set once the completed event was read, where the stream ends for the client.
        self.terminal_event_read = False
        self._events = EventBuffer()

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        complete = self._events.whole_events(chunk, end_of_stream)
        if not complete:
            return None
        self._drawing = self._drawing or _PARTIAL.search(complete) is not None
        if _READ_EVENTS.search(complete):
            for event in complete.split(EVENT_END):
                if _READ_EVENTS.search(event):
                    self._read_event(event)
        return None

    def _read_event(self, event: bytes) -> None:
        parsed = _parsed(event_data(event))
        if not isinstance(parsed, dict):
            return
        if parsed.get("type") in _COMPLETED:
            # The last picture's event carries the request's usage.
            self.usage = usage_from_images(parsed.get("usage")) or self.usage
            self.terminal_event_read = True
            return
        error = parsed.get("error")
        found = error if isinstance(error, dict) else {**parsed, "type": "server_error"}
        if self.failure is None:
            began = self._drawing or self.usage is not None
            self.failure = StreamFailure(ProviderStreamError.from_openai(found), began=began)

    def counts_so_far(self) -> StreamFailure | None:
        """What a stream cut before its completed event is charged beside its prompt:
        the pictures' allowance once it showed a partial picture, else nothing."""
        if not self._drawing or self.usage is not None:
            return None
        return StreamFailure(
            None, completion_tokens=self._allowance, image_output_tokens=self._allowance
        )

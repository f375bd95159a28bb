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

A stream (``stream: true``) is SSE: for each of the ``n`` pictures,
``image_generation.partial_image`` events (the picture so far, ``partial_images`` of
them), then ``image_generation.completed`` with that picture (one ``b64_json``) and its
usage (OpenAI's reference: ``output_tokens`` are "the image tokens in the output
image"); an ``error`` event fails it. An edit's stream (``/v1/images/edits``) is the same
with ``image_edit.`` events. Only the completed and error events are parsed; the
pictures pass untouched. The bill is the sum of the completed events' usage, each
picture's own: the stream ends for the client at the ``n``-th. A stream the provider
ends with fewer (one event reporting every picture) is billed what it reported.

A stream cut before its ``n``-th completed event is charged (``counts_so_far``) the
pictures completed as reported, and each other one as the quota reserved it (its
share of ``images_api.picture_allowance``) with the prompt as the first picture
reported it: the provider draws them all once asked, as a JSON answer cut in flight
is charged all ``n``. Cut before any completed event, it is charged the pictures'
allowance once it showed a partial picture (it was drawing), else its prompt. A
completed event without usage counts as a picture drawn and unreported. A provider's
error after a completed picture keeps that picture's bill; the pictures it failed to
draw are not billed.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from extproc.context import Usage
from extproc.translators.base import BufferedBodyReader, ProviderStreamError, StreamFailure
from extproc.translators.openai_embeddings import MAX_WHOLE_PARSE, TAIL_BYTES
from extproc.translators.openai_image_usage import summed_image_usage, usage_from_images
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
    """A streamed Images API answer: sums the completed events' usage and reads an
    error event, passes every byte through as it came."""

    def __init__(self, allowance: int = 0, pictures: int = 1) -> None:
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.status: int | None = None  # passed through as it is
        # Set when the provider failed the stream (base.StreamFailure).
        self.failure: StreamFailure | None = None
        # The pictures asked for (``n``) and the quota's reserve for all of them
        # (images_api.picture_allowance): what a stream cut before the last is charged
        # for each picture not reported.
        self._pictures = max(pictures, 1)
        self._allowance = allowance
        self._drawing = False
        # The completed events read, and the sum of the usage they reported.
        self._completed = 0
        self._reports = 0
        self._reported: Usage | None = None
        self._first: Usage | None = None
        # Set once the last picture's completed event was read, where the stream ends
        # for the client.
        self.terminal_event_read = False
        self._events = EventBuffer()

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        complete = self._events.whole_events(chunk, end_of_stream)
        if complete:
            self._drawing = self._drawing or _PARTIAL.search(complete) is not None
            if _READ_EVENTS.search(complete):
                for event in complete.split(EVENT_END):
                    if _READ_EVENTS.search(event):
                        self._read_event(event)
        if end_of_stream and self.usage is None and self._reported is not None:
            # The provider ended its stream short of n completed events (one event
            # reporting every picture): what it reported is its bill.
            self.usage = self._reported
        return None

    def _read_event(self, event: bytes) -> None:
        parsed = _parsed(event_data(event))
        if not isinstance(parsed, dict):
            return
        if parsed.get("type") in _COMPLETED:
            self._picture_completed(usage_from_images(parsed.get("usage")))
            return
        error = parsed.get("error")
        found = error if isinstance(error, dict) else {**parsed, "type": "server_error"}
        if self.failure is None:
            provider_error = ProviderStreamError.from_openai(found)
            if self._reported is not None:
                # The pictures completed before the error were drawn and are billed.
                self.failure = StreamFailure.reported(provider_error, self._reported, whole=True)
            else:
                began = self._drawing or self._completed > 0
                self.failure = StreamFailure(provider_error, began=began)

    def _picture_completed(self, usage: Usage | None) -> None:
        self._completed += 1
        self._drawing = True
        if usage is not None:
            self._reports += 1
            self._first = self._first or usage
            self._reported = summed_image_usage(self._reported, usage)
        if self._completed >= self._pictures:
            self.terminal_event_read = True
            if self._reports == self._completed:
                self.usage = self._reported

    def counts_so_far(self) -> StreamFailure | None:
        """What a stream cut before its last completed event is charged (the module
        docstring says why): the pictures reported as reported, each other one its
        reserve with the first picture's prompt; with no report, the pictures'
        allowance once it began drawing, else nothing beside the prompt estimate."""
        if self.usage is not None or not self._drawing:
            return None
        if self._reported is None or self._first is None:
            return StreamFailure(
                None, completion_tokens=self._allowance, image_output_tokens=self._allowance
            )
        rest = max(self._pictures - self._reports, 0)
        each = self._allowance // self._pictures
        first = self._first
        others = Usage(
            first.prompt_tokens * rest,
            each * rest,
            (first.prompt_tokens + each) * rest,
            image_tokens=first.image_tokens * rest,
            image_output_tokens=each * rest,
        )
        return StreamFailure.reported(None, summed_image_usage(self._reported, others), whole=True)

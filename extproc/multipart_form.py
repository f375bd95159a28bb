"""A ``multipart/form-data`` request body: its text fields, where its files lie.

OpenAI's image edits send their pictures as a form (RFC 7578): text fields (``model``,
``prompt``, ``n``...) and file parts (``image``, ``image[]``, ``mask``). The gateway
needs the text alone; the files are megabytes it neither reads nor copies. The parts
are found by ``python-multipart`` (the parser Starlette and FastAPI use, already in the
gateway's dependency set), fed the whole buffered body at once: its callbacks name each
part's data by offsets into that body, so a file is noted by where it lies, never
sliced. The body goes upstream as it came; a text field the gateway must change (the
provider's name for the model, a prompt a guard masked) is spliced in at its offsets
(``MultipartForm.with_fields``), the other bytes kept.

Anything that is not a well-formed form is a ``BadRequestError`` (400,
``invalid_multipart``) naming what is wrong: the reader raises nothing else.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from extproc.errors import BadRequestError

FORM_DATA = "multipart/form-data"
INVALID_MULTIPART = "invalid_multipart"
# RFC 2046: a boundary is 1 to 70 characters.
_MAX_BOUNDARY = 70
# A text field longer than this is no field of the Images API (a prompt is 32,000
# characters at most): refused rather than decoded and carried into the checks.
MAX_TEXT_FIELD_BYTES = 256 * 1024
# An edit has a dozen text fields and at most 16 pictures and a mask. Each part costs the
# parser some microseconds of Python on the event loop: a megabyte of tiny parts would
# hold it for a third of a second. A form of more parts is refused as soon as it shows.
MAX_PARTS = 64
# An array field's name ends so: its parts repeat it, one value each.
_ARRAY_SUFFIX = "[]"
# The most characters of a client's header or field name an error message quotes.
_MAX_QUOTED = 64
# python-multipart logs each malformed form at WARNING, with the parser's words: the
# client's 400 says what is wrong, and a stranger's junk form is no operator's concern.
# A Content-Disposition's field name parameter (`name=`, RFC 2231's `name*=`), not
# `filename=`: more than one is a form two readers read two ways.
_NAME_PARAMETER = re.compile(r";\s*name\*?\s*=", re.IGNORECASE)
_QUIET = logging.getLogger(__name__ + ".parser")
_QUIET.disabled = True
_QUIET.propagate = False


@dataclass(frozen=True, slots=True)
class FormFile:
    """A file part: its field name, the name and type the client gave it, where it lies."""

    name: str
    filename: str
    content_type: str | None
    # Where its bytes lie in the form's body (start, end).
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class MultipartForm:
    """A read form: ``fields`` its text fields by name (each given once), ``files`` its
    file parts in order, over the client's bytes ``raw``."""

    raw: bytes
    boundary: bytes
    fields: dict[str, str]
    files: tuple[FormFile, ...]
    # Where each text field's value lies in ``raw`` (start, end).
    spans: dict[str, tuple[int, int]] = field(repr=False)

    def with_fields(self, changed: Mapping[str, str]) -> bytes | None:
        """The body with the text fields of ``changed`` given their values, every other
        byte as it came: a field the form has is spliced at its offsets, one it lacks is
        added as the first part; None when nothing differs. The values are the
        gateway's (a configured model name, a checked prompt)."""
        edits = sorted(
            (self.spans[name], value.encode())
            for name, value in changed.items()
            if name in self.spans and self.fields[name] != value
        )
        added = b"".join(
            b"--" + self.boundary + b"\r\n"
            b'Content-Disposition: form-data; name="'
            + name.encode()
            + b'"\r\n\r\n'
            + value.encode()
            + b"\r\n"
            for name, value in changed.items()
            if name not in self.spans
        )
        if not edits and not added:
            return None
        # Before the first delimiter: after any preamble, which is no part.
        first = self.raw.find(b"--" + self.boundary)
        pieces: list[bytes] = [self.raw[:first], added]
        at = first
        for (start, end), value in edits:
            pieces.append(self.raw[at:start])
            pieces.append(value)
            at = end
        pieces.append(self.raw[at:])
        return b"".join(pieces)


def boundary_of(content_type: str | None) -> bytes:
    """The boundary a ``multipart/form-data`` content type names; a 400 for another
    type or a missing or malformed boundary."""
    try:
        kind, options = parse_options_header(content_type)
    except ValueError:  # a header that is not Latin-1 text
        kind, options = b"", {}
    if kind != FORM_DATA.encode():
        named = f"content-type {shown(content_type)!r}" if content_type else "no content-type"
        raise BadRequestError(
            f"this endpoint takes a multipart/form-data body; the request has {named}",
            code=INVALID_MULTIPART,
        )
    boundary = options.get(b"boundary", b"")
    if not 0 < len(boundary) <= _MAX_BOUNDARY:
        raise BadRequestError(
            "the multipart/form-data content-type names no boundary (or one over "
            f"{_MAX_BOUNDARY} characters)",
            code=INVALID_MULTIPART,
        )
    return boundary


class _TooManyPartsError(Exception):
    """Raised from a callback to stop the parser at the part past ``MAX_PARTS``."""


class _RepeatedHeaderError(Exception):
    """Raised from a callback at a part's header given twice (its name the message)."""


class _PartCollector:
    """python-multipart's callbacks: each part's headers and data offsets."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.parts: list[tuple[dict[str, str], int, int]] = []
        self._headers: dict[str, str] = {}
        self._header_name = b""
        self._header_value = b""
        self._start = -1
        self._end = -1
        self.contiguous = True

    def on_part_begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise _TooManyPartsError
        self._headers = {}
        self._start = self._end = -1

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        name = self._header_name.decode("latin-1").strip().lower()
        if name in self._headers:
            # Two Content-Dispositions (or types) of one part: this reader keeps one, a
            # provider's reader may keep the other, and read another field or model
            # than the one checked here.
            raise _RepeatedHeaderError(name)
        self._headers[name] = self._header_value.decode("latin-1").strip()
        self._header_name = self._header_value = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        # Fed the body in one piece, the parser names its data by offsets into it. A
        # part's data comes in runs (around a CR that was no boundary): they must join.
        if data is not self._body or (self._end != -1 and start != self._end):
            self.contiguous = False
        if self._start == -1:
            self._start = start
        self._end = end

    def on_part_end(self) -> None:
        start = max(self._start, 0)
        end = max(self._end, start)
        self.parts.append((self._headers, start, end))

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }


def read_form(body: bytes, content_type: str | None) -> MultipartForm:
    """Read ``body`` as the ``multipart/form-data`` its ``content_type`` says it is."""
    boundary = boundary_of(content_type)
    if not body:
        raise BadRequestError(
            "request body is empty; expected a multipart/form-data form", code=INVALID_MULTIPART
        )
    collector = _PartCollector(body)
    parser = MultipartParser(boundary, callbacks=collector.callbacks())  # type: ignore[arg-type]
    parser.logger = _QUIET
    try:
        parser.write(body)
        parser.finalize()
    except _RepeatedHeaderError as repeated:
        raise BadRequestError(
            f"a part of the form has its {shown(str(repeated))} header twice; send each once",
            code=INVALID_MULTIPART,
        ) from None
    except _TooManyPartsError:
        raise BadRequestError(
            f"the form has more than {MAX_PARTS} parts; an image edit has a few text "
            "fields and at most 16 pictures and a mask",
            code=INVALID_MULTIPART,
        ) from None
    except (FormParserError, ValueError) as exc:
        raise BadRequestError(
            f"request body is not a valid multipart/form-data form: {_first_line(exc)}",
            code=INVALID_MULTIPART,
        ) from None
    if not collector.parts or not collector.contiguous or not _closed(body, boundary):
        raise BadRequestError(
            "request body is not a complete multipart/form-data form (no part, or no "
            "closing boundary)",
            code=INVALID_MULTIPART,
        )
    return _form(body, boundary, collector.parts)


def _closed(body: bytes, boundary: bytes) -> bool:
    """Whether the form ends with its closing delimiter (a body cut short has none, and
    python-multipart's finalize does not say so)."""
    closing = b"--" + boundary + b"--"
    return body.rstrip(b"\r\n").endswith(closing)


def shown(text: str) -> str:
    """``text`` as an error quotes it: the client's, of any length, cut short."""
    return text if len(text) <= _MAX_QUOTED else text[:_MAX_QUOTED] + "..."


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def _form(
    body: bytes, boundary: bytes, parts: list[tuple[dict[str, str], int, int]]
) -> MultipartForm:
    fields: dict[str, str] = {}
    spans: dict[str, tuple[int, int]] = {}
    files: list[FormFile] = []
    for index, (part_headers, start, end) in enumerate(parts):
        disposition = part_headers.get("content-disposition")
        kind, options = parse_options_header(disposition) if disposition else (b"", {})
        name_bytes = options.get(b"name")
        if disposition and len(_NAME_PARAMETER.findall(disposition)) > 1:
            # name=a; name=b (or name*=): readers differ on which one names the field.
            raise BadRequestError(
                f"part {index} of the form names its field more than once in its "
                "Content-Disposition; name it once",
                code=INVALID_MULTIPART,
            )
        if kind != b"form-data" or name_bytes is None:
            raise BadRequestError(
                f"part {index} of the form has no 'Content-Disposition: form-data; "
                "name=...' header",
                code=INVALID_MULTIPART,
            )
        name = name_bytes.decode("utf-8", errors="replace")
        quoted = shown(name)
        filename = options.get(b"filename")
        if filename is not None:
            files.append(
                FormFile(
                    name,
                    filename.decode("utf-8", errors="replace"),
                    part_headers.get("content-type"),
                    start,
                    end,
                )
            )
            continue
        if name in fields and name.endswith(_ARRAY_SUFFIX):
            # An array field, one part per value (the audio API's
            # ``timestamp_granularities[]``, ``include[]``): sent on as they came; the
            # gateway reads and changes none of them, and keeps the first.
            continue
        if name in fields:
            # Which one would the provider read? Refused rather than guessed.
            raise BadRequestError(
                f"the form gives the field '{quoted}' twice", param=quoted, code=INVALID_MULTIPART
            )
        if end - start > MAX_TEXT_FIELD_BYTES:
            raise BadRequestError(
                f"the form's field '{quoted}' is {end - start} bytes, more than the "
                f"{MAX_TEXT_FIELD_BYTES} a text field may be",
                param=quoted,
                code=INVALID_MULTIPART,
            )
        try:
            fields[name] = body[start:end].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequestError(
                f"the form's field '{quoted}' is not UTF-8 text",
                param=quoted,
                code=INVALID_MULTIPART,
            ) from None
        spans[name] = (start, end)
    return MultipartForm(body, boundary, fields, tuple(files), spans)

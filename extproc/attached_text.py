"""Text a client sends as a file: base64 bytes of a text media type, which the model reads
as text.

Each API has a way to attach a file beside a prompt, and when the file is text (a
``.txt``, a CSV, Markdown, JSON...) the provider reads it as prompt text and bills it as
such:

- Gemini's ``inlineData`` of a text media type (``gemini_api.text_inline_data``);
- Bedrock Converse's ``document`` blocks in a text format (``txt``, ``csv``, ``md``,
  ``html``), their ``source.bytes`` base64 in JSON (``converse_document``);
- OpenAI's ``file_data`` (a chat ``file`` part's ``file``, a Responses API
  ``input_file`` part): a base64 data URL, or bare base64 named by its ``filename``
  (``openai_file``).

Left unread, such a file was a way around every request guard and reserved nothing.

Guards read it through ``EncodedText``, the holder of its ``TextSlot``: the base64 is
decoded on the first read only (so a route without guards never decodes it), leniently
(``decoded``), and a mask writes the new text back encoded, the data URL's header kept.
The quota's estimate counts it from its base64 length (``EncodedText.chars``,
``encoded_chars``), never decoding it: three bytes per four characters, the file's
length. PDFs, images, audio, office documents, and files by id or URL are no text here.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from typing import Any

# What is no character of base64 (its padding included).
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")
# The media types read as text beside text/*: the document types Gemini's docs list, which
# OpenAI takes as text files too.
_TEXT_APPLICATION_TYPES = frozenset(
    (
        "application/json",
        "application/xml",
        "application/x-javascript",
        "application/x-typescript",
        "application/x-python-code",
    )
)
# Bedrock Converse's document formats that are text (``pdf``, ``doc``, ``docx``, ``xls``
# and ``xlsx`` are not).
_CONVERSE_TEXT_FORMATS = frozenset(("txt", "csv", "md", "html"))
# A data URL's header says no more than "bytes": the filename tells then.
_UNTYPED = frozenset(("", "application/octet-stream"))
# Python's own table of extensions, not the host's (``mimetypes.init`` reads the host's
# files): the same answer on every machine.
_EXTENSIONS = mimetypes.MimeTypes()
# Text files that table names no type for (or not on every Python), which OpenAI reads
# as text.
_TEXT_EXTENSIONS = frozenset(
    ("md", "markdown", "yaml", "yml", "toml", "ini", "log", "tsv", "ts", "tsx", "jsx", "go",
     "rs", "java", "kt", "rb", "php", "sh", "sql", "cpp", "cc", "cs", "swift", "scala")
)  # fmt: skip


def is_text_media_type(media_type: Any) -> bool:
    """Whether a media type (parameters allowed: ``text/plain; charset=utf-8``) is text."""
    if not isinstance(media_type, str):
        return False
    media = media_type.partition(";")[0].strip().lower()
    return media.startswith("text/") or media in _TEXT_APPLICATION_TYPES


def decoded(data: str) -> str:
    """The text base64 ``data`` encodes: standard or URL-safe, padded or not, read past any
    other character (more leniently than any provider, so no spelling of a file hides it),
    bytes that are not UTF-8 replaced."""
    standard = _NOT_BASE64.sub("", data.replace("-", "+").replace("_", "/"))
    # A last lone character encodes no whole byte.
    standard = standard[: len(standard) - (len(standard) % 4 == 1)]
    try:
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4))
    except binascii.Error:
        return ""
    return raw.decode("utf-8", errors="replace")


def encoded_chars(data: str) -> int:
    """How many characters the text of base64 ``data`` is, about: its byte count (three
    per four characters), as the estimate counts text, without decoding it."""
    return len(data) * 3 // 4


class EncodedText:
    """A ``TextSlot`` holder: ``holder[key]``, a file's base64 (after ``prefix``, a data
    URL's header), read as the text it encodes and written as the base64 of new text."""

    __slots__ = ("_holder", "_key", "_prefix", "_text")

    def __init__(self, holder: dict[str, Any], key: str, prefix: str = "") -> None:
        self._holder = holder
        self._key = key
        self._prefix = prefix
        self._text: str | None = None

    def __getitem__(self, key: Any) -> str:
        if self._text is None:
            self._text = decoded(self._holder[self._key][len(self._prefix) :])
        return self._text

    def __setitem__(self, key: Any, text: str) -> None:
        self._text = text
        encoded = base64.b64encode(text.encode()).decode("ascii")
        self._holder[self._key] = self._prefix + encoded

    @property
    def chars(self) -> int:
        """The text's length as the estimate counts it: read, or else from the base64."""
        if self._text is not None:
            return len(self._text)
        return (len(self._holder[self._key]) - len(self._prefix)) * 3 // 4


def converse_document(block: dict[str, Any]) -> EncodedText | None:
    """A Converse ``document`` block's bytes when it is in a text format, else None."""
    fmt = block.get("format")
    source = block.get("source")
    if not isinstance(fmt, str) or fmt.lower() not in _CONVERSE_TEXT_FORMATS:
        return None
    if not isinstance(source, dict) or not isinstance(source.get("bytes"), str):
        return None
    return EncodedText(source, "bytes")


def openai_file(file: dict[str, Any]) -> EncodedText | None:
    """OpenAI's ``file_data`` of a text file (a chat ``file`` part's ``file``, a Responses
    ``input_file`` part), else None: a data URL of a text media type, or bytes whose data
    URL or bare base64 names no type, of a ``filename`` a text type's extension ends."""
    data = file.get("file_data")
    if not isinstance(data, str):
        return None
    prefix = ""
    media = ""
    if data[:5].lower() == "data:":
        # Partition, not a regex: the data can be megabytes long.
        header, comma, _ = data.partition(",")
        parameters = header[5:].split(";")
        if not comma or "base64" not in (p.strip().lower() for p in parameters[1:]):
            return None
        prefix = header + comma
        media = parameters[0].strip().lower()
    if is_text_media_type(media):
        return EncodedText(file, "file_data", prefix)
    filename = file.get("filename")
    if media in _UNTYPED and isinstance(filename, str) and _text_filename(filename):
        return EncodedText(file, "file_data", prefix)
    return None


def _text_filename(filename: str) -> bool:
    """Whether a file so named is text, by its extension."""
    extension = filename.rpartition(".")[2].lower()
    if extension in _TEXT_EXTENSIONS:
        return True
    return is_text_media_type(_EXTENSIONS.guess_type(filename, strict=False)[0])

"""Images an OpenAI client sends inline, as base64 data URLs, read for the providers that
take the format with the bytes (Anthropic's ``media_type``, Converse's ``format``).

OpenAI reads an image's format from its bytes, so clients label images loosely: a JPEG as
``image/jpg``, a screenshot's PNG as ``image/jpeg``. Anthropic and Bedrock take only png,
jpeg, gif and webp, spelled their way, and refuse an image whose bytes are another format
than the request names (Anthropic: "The image was specified using the image/jpeg media
type, but the image appears to be a image/png image"; Bedrock: "The provided image does
not match the specified image format"). So the format sent is the one the bytes start
with; only bytes of no format these providers take keep the label's.
"""

from __future__ import annotations

import base64
import binascii

# How the bytes of each format begin (webp: "RIFF", the file's size, then "WEBP").
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)
# The labels that name each format, ``image/jpg`` (no registered type) among them.
_LABELS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
# The base64 characters that hold the longest signature (webp's 12 bytes).
_HEAD_CHARS = 16


def image_format(label: str, data: str) -> str | None:
    """The format of a base64 image (``png``, ``jpeg``, ``gif`` or ``webp``): the one its
    bytes are, else the one its data URL's ``label`` names (``image/jpg`` as jpeg, in any
    case); None when neither names one of them."""
    try:
        head = base64.b64decode(data[:_HEAD_CHARS])
    except (binascii.Error, ValueError):
        head = b""  # not base64 from its start: the provider says what is wrong
    for signature, found in _SIGNATURES:
        if head.startswith(signature):
            return found
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return _LABELS.get(label.strip().lower())

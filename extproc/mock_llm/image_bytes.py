"""How the mock tells an image's format from its bytes, as Anthropic and Bedrock do when
they check the format a request names against the image it sends."""

from __future__ import annotations

# How the bytes of each format the providers take begin (webp: "RIFF", size, "WEBP").
_SIGNATURES = {
    "png": (b"\x89PNG",),
    "jpeg": (b"\xff\xd8\xff",),
    "gif": (b"GIF87a", b"GIF89a"),
    "webp": (b"RIFF",),
}
IMAGE_FORMATS = tuple(_SIGNATURES)


def format_of(raw: bytes) -> str | None:
    """The format (``png``, ``jpeg``, ``gif``, ``webp``) whose bytes ``raw`` are, if any."""
    for found, signatures in _SIGNATURES.items():
        # A RIFF file is a webp image only with "WEBP" after its size.
        if raw.startswith(signatures) and (found != "webp" or raw[8:12] == b"WEBP"):
            return found
    return None

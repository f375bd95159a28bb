"""An encoder for AWS's binary event stream (``application/vnd.amazon.eventstream``).

Bedrock's ConverseStream answers with this framing instead of SSE: the mock provider
writes its streams with it, and the gateway re-frames an InvokeModel stream whose text a
response guard rewrote (``guardrails.framed_stream``). Decoding is botocore's. Each message is::

    total length    uint32, big-endian; the whole message, these 4 bytes and the final CRC included
    headers length  uint32, big-endian
    prelude CRC     CRC-32 of the 8 bytes above
    headers         name length (uint8), name, value type (uint8), value
    payload         raw bytes; JSON for Bedrock
    message CRC     CRC-32 of everything before it, the prelude CRC included

The CRC is the common (zlib / gzip) CRC-32. Only string header values (type 7: uint16 length, then
UTF-8) are written, which is all Bedrock sends: ``:event-type`` (or ``:exception-type`` for an
error inside the stream), ``:content-type`` and ``:message-type``. The limits are the ones
decoders enforce (botocore refuses anything larger), so an oversized message fails here
instead of confusing the client.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

CONTENT_TYPE = "application/vnd.amazon.eventstream"

MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024

# The least a message takes (its framing around no headers and no payload) and the most.
MIN_MESSAGE_LENGTH = 16
MAX_MESSAGE_LENGTH = MIN_MESSAGE_LENGTH + MAX_HEADERS_LENGTH + MAX_PAYLOAD_LENGTH

_STRING_TYPE = 7
_PRELUDE = struct.Struct("!II")
_UINT32 = struct.Struct("!I")
_STRING_HEADER = struct.Struct("!BH")  # value type, value length
_MAX_NAME_LENGTH = 0xFF
_MAX_VALUE_LENGTH = 0xFFFF


def _crc32(data: bytes | bytearray, crc: int = 0) -> int:
    # zlib.crc32 is unsigned on Python 3; the mask documents that the wire field is 32 bits.
    return zlib.crc32(data, crc) & 0xFFFFFFFF


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The headers section: each header as a string-typed name/value pair, in the given order."""
    out = bytearray()
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        if not 0 < len(raw_name) <= _MAX_NAME_LENGTH:
            raise ValueError(f"event stream header name must be 1-255 bytes: {name!r}")
        if len(raw_value) > _MAX_VALUE_LENGTH:
            raise ValueError(f"event stream header {name!r}: value longer than 65535 bytes")
        out.append(len(raw_name))
        out += raw_name
        out += _STRING_HEADER.pack(_STRING_TYPE, len(raw_value))
        out += raw_value
    return bytes(out)


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One complete event stream message: prelude, prelude CRC, headers, payload, message CRC."""
    header_bytes = encode_headers(headers)
    if len(header_bytes) > MAX_HEADERS_LENGTH:
        raise ValueError(f"event stream headers exceed {MAX_HEADERS_LENGTH} bytes")
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise ValueError(f"event stream payload exceeds {MAX_PAYLOAD_LENGTH} bytes")
    # 12 bytes of prelude (two lengths and their CRC) and 4 of trailing message CRC.
    total_length = 12 + len(header_bytes) + len(payload) + 4
    prelude = _PRELUDE.pack(total_length, len(header_bytes))
    head = prelude + _UINT32.pack(_crc32(prelude))
    # The message CRC runs over the prelude CRC too; chaining the CRC avoids copying the payload.
    message_crc = _crc32(payload, _crc32(header_bytes, _crc32(head)))
    return b"".join((head, header_bytes, payload, _UINT32.pack(message_crc)))


def encode_event(event_type: str, payload: bytes) -> bytes:
    """A Bedrock stream event: a JSON payload named by ``:event-type``."""
    return encode_message(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        payload,
    )


def encode_exception(exception_type: str, payload: bytes) -> bytes:
    """An error inside a Bedrock stream, as AWS sends one after the 200: an ``exception``
    message named by ``:exception-type`` (lowerCamel, e.g. ``modelStreamErrorException``)."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        payload,
    )


def whole_messages(data: bytes) -> int | None:
    """How many leading bytes of ``data`` are whole messages, read from their length
    fields alone; None when a length no message can have says ``data`` is no event
    stream (or not from a message's start)."""
    at, end = 0, len(data)
    while end - at >= 4:
        (total,) = _UINT32.unpack_from(data, at)
        if not MIN_MESSAGE_LENGTH <= total <= MAX_MESSAGE_LENGTH:
            return None
        if end - at < total:
            break
        at += total
    return at


def with_fresh_checksums(original: bytes, changed: bytes) -> bytes:
    """``changed``, which is ``original`` (messages from their start) with bytes replaced
    in place, with each changed message's CRC made again over what it now holds.

    A message whose CRC did not match in ``original`` keeps its CRC: a broken message
    stays broken. A partial message at the end is left as it is."""
    out = bytearray(changed)
    at, end = 0, len(original)
    while end - at >= 4:
        (total,) = _UINT32.unpack_from(original, at)
        stop = at + total
        if total < MIN_MESSAGE_LENGTH or stop > end:
            break
        crc_at = stop - 4
        if out[at:stop] != original[at:stop]:
            (sent,) = _UINT32.unpack_from(original, crc_at)
            if sent == _crc32(original[at:crc_at]):
                _UINT32.pack_into(out, crc_at, _crc32(out[at:crc_at]))
        at = stop
    return bytes(out)


class WholeMessages:
    """What of a passed-through event stream the client may have yet: its whole messages.

    A message's start waits for its end. The body may end inside one (the upstream reset
    mid-frame): sent on, its bytes made botocore read the gateway's exception frame after
    them as that message's rest (a ``ChecksumMismatch`` instead of the gateway's error),
    or, with nothing after them, end the stream quietly. Bytes whose length fields no
    message can have (``whole_messages`` None) are no event stream the gateway can frame:
    from there on everything passes as it came, for the client's SDK to reject.
    """

    __slots__ = ("_held", "_passing")

    def __init__(self) -> None:
        self._held = bytearray()
        self._passing = False

    @property
    def partial(self) -> bool:
        """Whether a message's start is held, waiting for its end."""
        return bool(self._held)

    def take(self, chunk: bytes) -> bytes:
        """The whole messages ``chunk`` completes; ``chunk`` itself when it is exactly
        that, so a caller can tell nothing changed."""
        if self._passing:
            return chunk
        data = bytes(self._held) + chunk if self._held else chunk
        whole = whole_messages(data)
        if whole is None:
            self._passing = True
            self._held = bytearray()
            return data
        self._held = bytearray(data[whole:])
        return data if whole == len(data) else data[:whole]

    def release(self, data: bytes = b"") -> bytes:
        """What is held, then ``data``; from now on every chunk passes as it came."""
        self._passing = True
        held, self._held = bytes(self._held), bytearray()
        return held + data if held else data

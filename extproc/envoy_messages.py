"""Pure builders between the gateway's types and Envoy's ext_proc protobufs.

No I/O and no policy here: the processor asks for a message, this module builds it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from google.protobuf import struct_pb2

from extproc import headers
from extproc.context import ModeOverride, PhaseOutput
from extproc.errors import (
    AWS_RETRY_AFTER_HEADER,
    BEDROCK_ERROR_TYPE_HEADER,
    GatewayError,
    aws_retry_after,
    bedrock_exception,
)

_Mode = processing_mode_pb2.ProcessingMode
_BODY_MODES = {
    "NONE": _Mode.NONE,
    "STREAMED": _Mode.STREAMED,
    "BUFFERED": _Mode.BUFFERED,
}


def header_map(message: Any) -> dict[str, str]:
    """Envoy's header list as a dict (lower-case names; repeated names joined by commas)."""
    found = message.headers.headers
    # Envoy sends every value in raw_value; names are seldom repeated. One pass
    # for that common case, the careful one when a name repeats or a value is
    # in the legacy ``value`` field.
    result = {header.key: header.raw_value.decode("utf-8", "replace") for header in found}
    if len(result) == len(found) and all(result.values()):
        return result
    result = {}
    for header in found:
        value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        key = header.key
        result[key] = f"{result[key]},{value}" if key in result else value
    return result


def status_code(text: str) -> int:
    """An HTTP status as ``:status`` carries it (three ASCII digits), else 0.

    ``str.isdigit`` alone takes other digits too: ``"²"`` passes it and ``int`` then
    raises, and a long run of digits is a number no log line or metric can hold."""
    return int(text) if is_decimal(text) and len(text) <= 3 else 0


def is_decimal(text: str) -> bool:
    """Whether ``text`` is a non-negative decimal number in ASCII digits (a
    ``content-length``): what ``int`` reads as HTTP means it."""
    return text.isascii() and text.isdigit()


# More digits than any body size: read as this, not parsed (int() refuses a string of
# thousands of digits).
_HUGE = 10**18


def content_length(text: str) -> int | None:
    """A ``content-length`` as HTTP means it (ASCII digits), None for anything else; a
    number of more than 18 digits is read as 10**18, past any limit."""
    if not is_decimal(text):
        return None
    digits = text.lstrip("0")
    return _HUGE if len(digits) > 18 else int(digits or "0")


def _fill_common(common: ext.CommonResponse, out: PhaseOutput) -> None:
    """Write the phase's header and body changes into ``common``, in place."""
    if out.set_headers or out.remove_headers:
        mutation = common.header_mutation
        for key, value in out.set_headers.items():
            option = mutation.set_headers.add()
            option.header.key = key
            option.header.raw_value = value.encode()
            option.append_action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        mutation.remove_headers.extend(out.remove_headers)
    if out.body is not None:
        if out.body:
            common.body_mutation.body = out.body
        else:
            common.body_mutation.clear_body = True
    if out.clear_route_cache:
        common.clear_route_cache = True


# Built once per override: a handful of constant overrides answer every request, and the
# answer copies the built message in one call.
@cache
def _mode_override(override: ModeOverride) -> Any:
    # Envoy replaces the whole mode with the override: every field is spelled out.
    mode = _Mode()
    mode.request_body_mode = _Mode.NONE if override.skip_request_body else _Mode.BUFFERED
    # SEND said outright: the filter's own default is SKIP (envoy_bootstrap).
    mode.response_header_mode = _Mode.SKIP if override.skip_response_headers else _Mode.SEND
    if override.response_body is not None:
        mode.response_body_mode = _BODY_MODES[override.response_body]
    return mode


@cache
def _client_api_metadata(shape: str) -> struct_pb2.Struct:
    """The dynamic metadata naming the client's API, built once per API shape: every AI
    request's first answer carries it, and one copy is cheaper than building it."""
    built = struct_pb2.Struct()
    built.fields[headers.METADATA_NAMESPACE].struct_value.fields[
        headers.CLIENT_API_KEY
    ].string_value = shape
    return built


def _finish(response: ext.ProcessingResponse, out: PhaseOutput) -> ext.ProcessingResponse:
    if out.mode_override is not None:
        response.mode_override.CopyFrom(_mode_override(out.mode_override))
    if out.client_api is not None:
        # First: the answer's metadata is still empty, so a copy is the whole of it, and
        # ``metadata`` below adds its fields beside this one.
        response.dynamic_metadata.CopyFrom(_client_api_metadata(out.client_api))
    if out.metadata is not None:
        add_metadata(response, out.metadata)
    return response


def add_metadata(response: ext.ProcessingResponse, metadata: dict[str, Any]) -> None:
    """Dynamic metadata in the gateway's namespace, for Envoy's access log and tracer."""
    # Field by field: Struct.update() is several times slower for flat values.
    fields = response.dynamic_metadata.fields[headers.METADATA_NAMESPACE].struct_value.fields
    for key, value in metadata.items():
        if isinstance(value, str):
            fields[key].string_value = value
        else:
            fields[key].number_value = value


def _continue(phase: str) -> ext.ProcessingResponse:
    response = ext.ProcessingResponse()
    getattr(response, phase).SetInParent()
    return response


# Every message Envoy sends and waits for an answer to. Trailers included: no stage
# reads them, yet Envoy waits for an answer to each message.
ANSWERED_PHASES = (
    "request_headers",
    "request_body",
    "response_headers",
    "response_body",
    "request_trailers",
    "response_trailers",
)
# "Continue unchanged" is the most common answer: built once per phase, never mutated.
_CONTINUE = {phase: _continue(phase) for phase in ANSWERED_PHASES}


def continue_response(phase: str) -> ext.ProcessingResponse:
    """Let one phase's message (trailers included) through unchanged."""
    return _CONTINUE[phase]


def phase_response(phase: str, out: PhaseOutput) -> ext.ProcessingResponse:
    """Answer one phase's message (``request_headers``, ``response_body``, ...)."""
    if not (
        out.set_headers
        or out.remove_headers
        or out.body is not None
        or out.clear_route_cache
        or out.mode_override is not None
        or out.metadata is not None
        or out.client_api is not None
    ):
        return _CONTINUE[phase]
    response = ext.ProcessingResponse()
    target = getattr(response, phase)
    if out.set_headers or out.remove_headers or out.body is not None or out.clear_route_cache:
        _fill_common(target.response, out)
        if phase in ("request_headers", "response_headers") and out.body is not None:
            # A body from the headers' answer (a request or an answer that ended with
            # its headers, whose body phase ran there): Envoy applies it only when told to.
            target.response.status = ext.CommonResponse.CONTINUE_AND_REPLACE
    else:
        target.SetInParent()
    return _finish(response, out)


def immediate_response(
    status: int, body: bytes, extra_headers: dict[str, str]
) -> ext.ProcessingResponse:
    """Answer the client directly; Envoy sends this and never calls the upstream."""
    response = ext.ProcessingResponse()
    immediate = response.immediate_response
    # StatusCode is an open enum whose numbers are the HTTP statuses.
    immediate.status.code = status
    immediate.body = body
    for key, value in extra_headers.items():
        option = immediate.headers.set_headers.add()
        option.header.key = key
        option.header.raw_value = value.encode()
        option.append_action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    immediate.details = "aigw"
    return response


def reset_response(
    error: GatewayError, request_id: str, api_shape: str, out: PhaseOutput
) -> ext.ProcessingResponse:
    """Fail a response in its body phase, its status perhaps gone: ``error`` as an
    immediate answer. Envoy 1.40 sends it (its status, its body) when it still holds the
    response's headers (the failure came in the first bytes of the body it read, before
    it applied the answer to the headers); once they have left it cannot, and resets the
    client's stream instead (HTTP/1.1: the connection closes before the chunked body's
    end; HTTP/2: RST_STREAM) and the provider's. The metadata goes with it."""
    response = error_response(error, request_id, api_shape)
    response.immediate_response.details = "aigw_response_failed"
    if out.metadata is not None:
        add_metadata(response, out.metadata)
    return response


def error_response(
    error: GatewayError, request_id: str, api_shape: str = "openai"
) -> ext.ProcessingResponse:
    extra = {"content-type": "application/json", **error.headers}
    if api_shape == "bedrock":
        extra[BEDROCK_ERROR_TYPE_HEADER] = error.aws_exception or bedrock_exception(error.status)
        if (wait := aws_retry_after(error.headers)) is not None:
            extra[AWS_RETRY_AFTER_HEADER] = wait
    if request_id:
        extra[headers.REQUEST_ID] = request_id
    return immediate_response(error.status, error.body(api_shape), extra)

"""Phase answers that many requests share, built once and copied.

The answers to a request's headers and body differ little between requests: the
headers the gateway strips, the processing mode it picks, the provider's route and
credentials, and the names of the caller, route and model for Envoy's access log
and span (``io.aigw`` metadata). Built field by field, the request body's answer
costs about 10 us of protobuf calls; parsed from its bytes, kept from a request
that ended alike, about 1.5 us. The copy is a new message each time, so a reader
that indexes its maps (which inserts keys) changes no other request's answer.

Only answers that stand for a small set of requests are kept: no body (a rewritten
body is the request's own), metadata of short strings only (token counts and costs
vary with every answer). The cache belongs to one ``Runtime`` (one config): a reload
starts an empty one, so a rotated provider key is not kept past its config.
"""

from __future__ import annotations

from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.context import PhaseOutput
from extproc.envoy_messages import phase_response

# Distinct answers kept: one per caller, route, model and provider combination in
# use. Past it the cache starts again, so made-up values cannot grow memory.
ANSWER_CACHE_SIZE = 4096
# A metadata value longer than this (captured content) makes the answer the
# request's own: it is built, never kept.
_MAX_KEPT_VALUE = 256
_SIGNED_FOR_AWS = "x-amz-date"


class AnswerCache:
    def __init__(self, size: int = ANSWER_CACHE_SIZE) -> None:
        self._size = size
        self._answers: dict[tuple[Any, ...], bytes] = {}

    def phase_response(self, phase: str, out: PhaseOutput) -> ext.ProcessingResponse:
        """``envoy_messages.phase_response``, from a kept copy where one request ended alike."""
        key = _key(phase, out)
        if key is None:
            return phase_response(phase, out)
        kept = self._answers.get(key)
        if kept is not None:
            return ext.ProcessingResponse.FromString(kept)
        answer = phase_response(phase, out)
        if len(self._answers) >= self._size:
            self._answers.clear()
        self._answers[key] = answer.SerializeToString()
        return answer


def _key(phase: str, out: PhaseOutput) -> tuple[Any, ...] | None:
    """Everything the phase's answer is built from, or None when it is not to be kept."""
    if out.body is not None or out.answer is not None or out.reset is not None:
        return None
    if _SIGNED_FOR_AWS in out.set_headers:
        # A SigV4 signature (Bedrock) is the request's own, its time and body hash in it:
        # kept, it would only fill the cache with answers no later request shares.
        return None
    metadata = out.metadata
    kept_metadata: tuple[tuple[str, Any], ...] | None = None
    if metadata is not None:
        for value in metadata.values():
            if not isinstance(value, str) or len(value) > _MAX_KEPT_VALUE:
                return None
        kept_metadata = tuple(metadata.items())
    return (
        phase,
        tuple(out.set_headers.items()),
        tuple(out.remove_headers),
        out.clear_route_cache,
        out.mode_override,
        out.client_api,
        kept_metadata,
    )

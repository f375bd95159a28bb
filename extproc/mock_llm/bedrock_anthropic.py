"""Claude on Bedrock's InvokeModel and InvokeModelWithResponseStream: Anthropic's Messages API
in Bedrock's envelope; and CountTokens for Claude.

``bedrock_api.BedrockEndpoints`` owns the HTTP side (SigV4, faults, AWS-shaped errors, the
writes); this module owns what differs from Anthropic's own API, and takes the rest from
``anthropic_api`` (request checks, the reply, its content blocks and usage), so the two
surfaces answer one prompt alike.

The request body is a Messages body without ``model`` (the path names it), ``stream``
(the operation says it) and ``service_tier`` (a header picks Bedrock's tiers), with
``"anthropic_version": "bedrock-2023-05-31"`` and optionally ``anthropic_beta`` (a list of
strings). Bedrock's schema check comes first and names every rule broken, in its words:
``Malformed input request: #: required key [anthropic_version] not found#: extraneous key
[model] is not permitted, please reformat your input and try again.``; another
``anthropic_version`` is "Invalid API version: ...".
Then Anthropic's own checks, whose messages Bedrock passes on as they are.

CountTokens (``POST .../model/{modelId}/count-tokens``, served by ``bedrock_api``) counts
an InvokeModel body (``count_claude_tokens``): the same checks as InvokeModel's, then
the ``usage.input_tokens`` InvokeModel would report for that body (no cache read or
written: a count touches no cache).

The JSON answer is Anthropic's Message, as Bedrock relays it: the model named as Anthropic
names it (``claude-3-haiku-20240307`` for ``anthropic.claude-3-haiku-20240307-v1:0``, also
through an inference profile or an ARN), ids of Bedrock's shape (``msg_bdrk_...``,
``toolu_bdrk_...``) and ``usage`` with both cache counts always present. The token counts
also travel in InvokeModel's ``X-Amzn-Bedrock-Input-Token-Count`` /
``-Output-Token-Count`` headers (input: ``usage.input_tokens``, without cache reads and
writes).

The stream is Anthropic's event sequence, each event one event-stream message
(``:event-type: chunk``) whose payload is ``{"bytes": "<base64 of the event's JSON>"}``.
Bedrock forwards no ``ping`` (recorded Bedrock streams show none), and adds
``amazon-bedrock-invocationMetrics`` (input and output token counts as above, invocation and
first-byte latency in ms) to ``message_stop``.

Anthropic's server tool counts and service tier (``x-mock-server-tool-use``,
``x-mock-service-tier``) are not reported: Bedrock's answers carry neither.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from extproc.aws_eventstream import encode_event
from extproc.mock_llm.anthropic_api import (
    CacheWriteSpecError,
    InvalidRequestError,
    MessagesRequest,
    Reply,
    build_reply,
    cache_writes,
    input_token_count,
    parse_messages_request,
    scripted_anthropic_reply,
)
from extproc.mock_llm.bedrock_embeddings import (
    INPUT_TOKEN_COUNT_HEADER,
    MalformedInputError,
    json_object,
    refuse_violations,
    wrong_type,
)
from extproc.mock_llm.faults import Fault
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.scripted import ScriptError, scripted_pieces, scripted_tool_calls

BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
OUTPUT_TOKEN_COUNT_HEADER = "X-Amzn-Bedrock-Output-Token-Count"
# InvokeModelWithResponseStream names the content type of the chunks in its own header.
STREAM_CONTENT_TYPE_HEADER = "X-Amzn-Bedrock-Content-Type"
CHUNK_EVENT = "chunk"
INVOCATION_METRICS = "amazon-bedrock-invocationMetrics"

# Required by Bedrock's schema for Claude, beside what Anthropic's API requires.
_REQUIRED_KEYS = ("anthropic_version", "max_tokens", "messages")
# Anthropic's fields that Bedrock takes elsewhere: the model from the path, the stream
# from the operation, the service tier from InvokeModel's X-Amzn-Bedrock-Service-Tier
# header (its values are Bedrock's: default, flex, priority, reserved).
_EXTRANEOUS_KEYS = ("model", "stream", "service_tier")
# Bedrock's own keys, which Anthropic's checks do not know.
_BEDROCK_KEYS = ("anthropic_version", "anthropic_beta")
# A Claude model or inference profile id: an optional geographic prefix (us., eu.,
# global....), then anthropic.<the Anthropic model name>-v<version>[:<revision>].
_CLAUDE_ID = re.compile(r"(?:[a-z-]+\.)?anthropic\.(claude-[a-z0-9.-]+?)(?:-v\d+(?::\d+)?)?")


def claude_model_name(model: str) -> str | None:
    """The Anthropic model name of a Bedrock Claude model or profile id
    (``us.anthropic.claude-sonnet-4-5-20250929-v1:0`` -> ``claude-sonnet-4-5-20250929``);
    None for another model. ``model`` is an id, not an ARN (``model_of_identifier``)."""
    match = _CLAUDE_ID.fullmatch(model)
    return match.group(1) if match else None


def _schema_violations(doc: dict[str, Any]) -> list[str]:
    violations = [f"#: required key [{key}] not found" for key in _REQUIRED_KEYS if key not in doc]
    violations += [
        f"#: extraneous key [{key}] is not permitted" for key in _EXTRANEOUS_KEYS if key in doc
    ]
    version = doc.get("anthropic_version", BEDROCK_ANTHROPIC_VERSION)
    if not isinstance(version, str):
        violations.append(wrong_type("anthropic_version", "String", version))
    betas = doc.get("anthropic_beta", [])
    if not isinstance(betas, list):
        violations.append(wrong_type("anthropic_beta", "JSONArray", betas))
    else:
        violations += [
            wrong_type(f"anthropic_beta/{i}", "String", beta)
            for i, beta in enumerate(betas)
            if not isinstance(beta, str)
        ]
    return violations


def parse_claude_request(model_name: str, body: Body) -> MessagesRequest:
    """Check an InvokeModel body for Claude as Bedrock does, then as Anthropic's API does;
    raises MalformedInputError with the message Bedrock answers (a ValidationException)."""
    doc = json_object(body)
    refuse_violations(_schema_violations(doc))
    if doc["anthropic_version"] != BEDROCK_ANTHROPIC_VERSION:
        raise MalformedInputError(f"Invalid API version: {doc['anthropic_version']}")
    anthropic_doc = {key: value for key, value in doc.items() if key not in _BEDROCK_KEYS}
    anthropic_doc["model"] = model_name
    try:
        return parse_messages_request(Body(orjson.dumps(anthropic_doc), True, anthropic_doc))
    except InvalidRequestError as exc:
        # Bedrock passes the model's refusal on in its own words.
        raise MalformedInputError(str(exc)) from None


def count_claude_tokens(model_name: str, body: Body) -> int:
    """CountTokens' count of an InvokeModel body for Claude: the ``usage.input_tokens``
    InvokeModel reports for it. Raises MalformedInputError (a ValidationException) for a
    body InvokeModel refuses, ``max_tokens`` missing included."""
    req = parse_claude_request(model_name, body)
    return input_token_count(req.messages, req.system, req.tools)


@dataclass(frozen=True, slots=True)
class ClaudeInvocation:
    """One Claude answer, ready to be sent whole (``message``) or streamed (``events``)."""

    model: str  # the Anthropic model name
    reply: Reply
    message_id: str  # msg_bdrk_...

    @property
    def input_tokens(self) -> int:
        """``usage.input_tokens``: the prompt without cache reads and writes."""
        input_tokens: int = self.reply.input_usage()["input_tokens"]
        return input_tokens

    @property
    def output_tokens(self) -> int:
        return self.reply.output_tokens

    def _input_usage(self) -> dict[str, Any]:
        # Bedrock reports both cache counts, at 0 when nothing was read or written.
        return {
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            **self.reply.input_usage(),
        }

    def _message(
        self, content: list[dict[str, Any]], output_tokens: int, *, done: bool
    ) -> dict[str, Any]:
        """The Message object, complete or (``done`` false) as ``message_start`` opens it."""
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.reply.stop_reason if done else None,
            "stop_sequence": self.reply.stop_sequence if done else None,
            "usage": {**self._input_usage(), "output_tokens": output_tokens},
        }

    def message(self) -> dict[str, Any]:
        """InvokeModel's answer: Anthropic's Message object."""
        return self._message(self.reply.content(self.message_id), self.output_tokens, done=True)

    def token_headers(self) -> dict[str, str]:
        return {
            INPUT_TOKEN_COUNT_HEADER: str(self.input_tokens),
            OUTPUT_TOKEN_COUNT_HEADER: str(self.output_tokens),
        }

    def events(self) -> list[dict[str, Any]]:
        """The stream's Anthropic events, as ``anthropic_api`` streams them, without ``ping``;
        ``message_stop`` gets its metrics when it is sent (``invocation_metrics``)."""
        # Anthropic reports the input up front with a placeholder output count of 1.
        start = self._message([], 1, done=False)
        events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
        for index, (block, deltas) in enumerate(self.reply.blocks(self.message_id)):
            events.append({"type": "content_block_start", "index": index, "content_block": block})
            events += [
                {"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas
            ]
            events.append({"type": "content_block_stop", "index": index})
        stop = {"stop_reason": self.reply.stop_reason, "stop_sequence": self.reply.stop_sequence}
        events.append(
            {"type": "message_delta", "delta": stop, "usage": {"output_tokens": self.output_tokens}}
        )
        events.append({"type": "message_stop"})
        return events

    def invocation_metrics(self, latency_ms: int, first_byte_ms: int) -> dict[str, Any]:
        """What Bedrock adds to ``message_stop``."""
        return {
            INVOCATION_METRICS: {
                "inputTokenCount": self.input_tokens,
                "outputTokenCount": self.output_tokens,
                "invocationLatency": latency_ms,
                "firstByteLatency": first_byte_ms,
            }
        }


def invoke_claude(
    model_name: str, body: Body, headers: Mapping[str, str], fault: Fault, message_id: str
) -> ClaudeInvocation:
    """The answer to an InvokeModel(-WithResponseStream) request for Claude: Anthropic's reply
    to the body, with the cache writes and scripted answer the test headers ask for.
    Raises MalformedInputError (a ValidationException) for a request Bedrock refuses."""
    req = parse_claude_request(model_name, body)
    try:
        writes = cache_writes(headers)
        pieces = scripted_pieces(headers)
        calls = scripted_tool_calls(headers)
    except (CacheWriteSpecError, ScriptError) as exc:
        raise MalformedInputError(str(exc)) from None
    reply = build_reply(req, fault).writing(writes)
    if pieces is not None or calls is not None:
        reply = scripted_anthropic_reply(reply, pieces, calls)
    return ClaudeInvocation(req.model, reply, message_id)


def chunk_message(event_json: bytes) -> bytes:
    """One event of the stream as Bedrock frames it: a ``chunk`` holding the JSON's bytes."""
    payload = orjson.dumps({"bytes": base64.b64encode(event_json).decode()})
    return encode_event(CHUNK_EVENT, payload)


StreamEnding = Literal["reset", "error", "inside"]


@dataclass(frozen=True, slots=True)
class StreamCut:
    """Where a fault ends a stream early: the first event not sent, and what replaces the
    rest (the connection dropped, Bedrock's mid-stream exception, or the first half of
    that event's frame before the body's clean end)."""

    at: int
    ending: StreamEnding


def stream_cut(events: Sequence[Mapping[str, Any]], fault: Fault) -> StreamCut | None:
    """Where ``reset_after`` / ``error_after`` / ``end_inside`` end ``events``: before the
    delta past that many, or, with fewer deltas, before the last block's stop, so the
    stream never completes; the earliest, a reset first when they meet, as the other
    surfaces do."""
    deltas = [i for i, event in enumerate(events) if event["type"] == "content_block_delta"]
    last_stop = max(i for i, event in enumerate(events) if event["type"] == "content_block_stop")
    limits: tuple[tuple[StreamEnding, int | None], ...] = (
        ("reset", fault.reset_after),
        ("error", fault.error_after),
        ("inside", fault.end_inside),
    )
    cuts = [
        StreamCut(deltas[after] if after < len(deltas) else last_stop, ending)
        for ending, after in limits
        if after is not None
    ]
    # min keeps the first of equals: the reset.
    return min(cuts, key=lambda cut: cut.at) if cuts else None

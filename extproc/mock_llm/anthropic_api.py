"""The mock's Anthropic surface: the Messages API (plain and SSE streaming) and its errors.

Replies and token counts follow the shared rules in ``tokens``. In Anthropic's terms:

- ``input_tokens`` counts the system prompt, when there is one, as one more message.
- ``output_tokens`` is the number of reply pieces sent; ``max_tokens`` (required, as on the
  real API) keeps the first N pieces and sets ``stop_reason`` to "max_tokens", else "end_turn".
- ``stop_sequences``: the reply ends before the first one it contains, with ``stop_reason``
  "stop_sequence" and ``stop_sequence`` naming it.
- ``output_config.format`` (``json_schema``): the reply is JSON built from the schema, as for
  OpenAI's ``response_format`` (``json_reply``).
- Forced tool use (``tool_choice`` ``any`` or ``tool``): the answer is ``tool_use`` blocks
  only, as on the real API: one per tool for ``any`` (parallel calls) unless
  ``disable_parallel_tool_use``, the named tool for ``tool``. Inputs are built from each
  tool's ``input_schema`` like JSON replies; output tokens are the tokens of the inputs' JSON.
  ``auto`` and ``none`` answer text.
- Extended thinking (``thinking: {"type": "enabled", "budget_tokens": N}``) and adaptive
  thinking (``{"type": "adaptive"}``, ``output_config.effort`` or not): the answer starts
  with a ``thinking`` block (``THOUGHT``, one piece per token, with a signature), streamed
  as ``thinking_delta`` pieces then a ``signature_delta``; its tokens are output tokens,
  counted in ``output_tokens`` and against ``max_tokens`` as on the real API (adaptive
  thinking under a ``max_tokens`` too small for the thought ends in it, "max_tokens").
  ``disabled`` thinking answers without a thinking block. ``thinking.display: "omitted"``
  (the default of Claude Opus 4.7 and later, the 5 generation, Mythos and Fable) leaves the
  block's text empty (a signature, no ``thinking_delta``), its tokens billed all the same;
  ``"summarized"`` (the default before them) shows it.
- Scripted answers (``scripted``): header ``x-mock-reply`` chooses the text, and
  ``x-mock-tool-calls`` makes the answer call tools after it, with the input pieces the test
  chose (``stop_reason`` "tool_use"; output tokens are the text pieces and the input pieces).
- ``/v1/messages/count_tokens`` answers ``{"input_tokens": N}``, N being the ``input_tokens``
  a Messages call with the same prompt reports; generation fields (``max_tokens``,
  ``stream``...) are refused as extra inputs, as on the real API.
- Prompt-cache writes on request, header ``x-mock-cache-write: 5m=N;1h=M`` (the gateway
  forwards it): N and M of the prompt tokens (at most those left after the ``cached`` fault's
  reads, 1-hour ones first) are reported as written to the 5-minute and the 1-hour cache, as
  Anthropic reports them: ``cache_creation_input_tokens`` (both), ``cache_creation``
  (``ephemeral_5m_input_tokens``, ``ephemeral_1h_input_tokens``) and ``input_tokens``
  without them. Bedrock (``bedrock_api``) takes the same header, Claude's caches being the
  same there.
- Server tool use on request, header ``x-mock-server-tool-use: web_search=N;web_fetch=M``
  (any tool name): reported as Anthropic reports the requests its server tools made,
  ``usage.server_tool_use: {"web_search_requests": N, "web_fetch_requests": M}``, in JSON
  answers and in a stream's ``message_delta``; a stream's ``message_start`` reports them
  at 0 (they run while the answer streams).
- Server tool results on request, header ``x-mock-result-blocks``: a JSON array of content
  blocks (``web_fetch_tool_result``, ``mcp_tool_result``...) the answer starts with, as
  Claude's answer carries what its server tools returned; a stream sends each whole in its
  ``content_block_start``, with no delta, as Anthropic does.
- Web search: a request with Anthropic's web search tool (``web_search_20250305``...) and a
  text answer is answered as after one search (``web_search``): the search call and its
  result, then the reply's text, all but its first piece citing the page found
  (``citations_delta`` in a stream); usage reports the search unless
  ``x-mock-server-tool-use`` says otherwise.
- Service tiers: ``usage.service_tier`` reports the tier that served the request, as
  Anthropic reports it, in JSON answers and in a stream's ``message_start``: ``standard``,
  or ``priority`` with header ``x-mock-service-tier: priority`` (an organisation with
  Priority Tier capacity) unless the request's ``service_tier`` is ``standard_only``.
  The request's ``service_tier`` must be ``auto`` or ``standard_only``, as on the real API.
- Inference geography: a request's ``inference_geo`` (``global`` or ``us``; anything else
  is a 400) is reported where it ran, ``usage.inference_geo``, in JSON answers and in a
  stream's ``message_start``. Header ``x-mock-inference-geo: us`` is the workspace's
  default geography, for a request that names none (an OpenAI client's, which cannot).
  A request with neither reports none.
- A stream is Anthropic's event sequence: ``message_start`` (input tokens, output tokens 1),
  then per content block ``content_block_start``, its deltas (``text_delta`` pieces, or for a
  tool an empty ``input_json_delta`` then one per piece of the input's JSON) and
  ``content_block_stop``, a ``ping`` after the first block's start, then ``message_delta``
  (stop reason and cumulative output tokens) and ``message_stop``, each written on its own.
  With the ``error_after`` fault, an ``error`` event (``overloaded_error``) replaces the rest
  after that many deltas; with ``error_first``, the error of that status
  (``rate_limit_error``, ``api_error``) is the stream's only event, before
  ``message_start``.

Requests are checked the way the real API checks them, so that a translator bug fails a test
here rather than in production (messages quoted from Anthropic's answers where known):
required fields; fields it does not know (``n: Extra inputs are not permitted``); empty
turns other than a final assistant one; empty or whitespace-only text; a final assistant
turn ending in whitespace; ``tool_result`` blocks that do not answer the ``tool_use`` blocks
of the turn just before, or that follow other blocks; tool call ids outside
``^[a-zA-Z0-9_-]+$`` (another provider's ``functions.get_weather:0``); a base64 image whose
``media_type`` is not ``image/jpeg``, ``image/png``, ``image/gif`` or ``image/webp``, or whose
bytes are another of these formats than it names; a stop sequence of whitespace alone;
a base64 ``document`` that is not ``application/pdf`` or whose bytes are no PDF ("The PDF
specified was not valid."); a ``metadata`` with a key other than ``user_id``, or whose
``user_id`` is over 256 characters or holds an e-mail address ("metadata.user_id: user_id
appears to contain an email address"); ``temperature`` / ``top_p`` outside 0..1, and, with
``anthropic-version: 2026-10-21`` (which removed them), any of ``temperature``,
``top_p``, ``top_k``; ``tool_use`` or ``tool_result`` blocks in a request that defines no
``tools`` ("Requests which include `tool_use` or `tool_result` blocks must define
tools."); a thinking mode the model does not take:
a fixed budget for Claude Opus 4.7 and later, the 5 generation, Mythos and Fable, which
think adaptively only, and adaptive thinking for the models before Opus 4.6 and Sonnet 4.6
(Claude 3.7 Sonnet, the 4.0, 4.1 and 4.5 models); an ``output_config.effort`` other than
``low``, ``medium``, ``high``, ``xhigh`` or ``max``; and, with thinking on (a budget or
adaptive), a budget below 1,024 or not below ``max_tokens``, a ``temperature`` other than
1, a ``top_p`` below 0.95, any ``top_k``, a ``tool_choice`` that forces tool use, and a
final assistant turn (a prefill, or the one whose tool calls the last user turn answers)
that does not start with a thinking block.

Credentials are an ``x-api-key`` header or ``Authorization: Bearer``: the anthropic Python
client (2.14 here) sends its ``api_key`` as a bearer token, while older clients and curl
examples use ``x-api-key``. ``anthropic-version`` is required, as on the real API.

Errors use Anthropic's shape ``{"type": "error", "error": {"type": ..., "message": ...}}``,
whose ``error.type`` the anthropic client and gateways branch on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.error_bodies import error_in_success
from extproc.mock_llm.faults import FAULT_HEADER, Fault, FaultSpecError, parse_fault
from extproc.mock_llm.image_bytes import format_of
from extproc.mock_llm.json_reply import instance
from extproc.mock_llm.prompt_cache import (
    Breakpoint,
    BreakpointError,
    PromptCache,
    anthropic_breakpoints,
)
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.scripted import (
    ScriptedCall,
    ScriptError,
    cut_short,
    scripted_pieces,
    scripted_tool_calls,
)
from extproc.mock_llm.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    count_tokens,
    message_text,
    prompt_tokens,
    reply_pieces,
    reply_text,
    token_pieces,
)
from extproc.mock_llm.web_search import WebSearch, asked_search

API_KEY_HEADER = "x-api-key"
VERSION_HEADER = "anthropic-version"
MISSING_KEY_MESSAGE = "x-api-key header is required"

_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_GARBAGE = b'{"id": "msg_garbage", this is not json'
_GARBAGE_DATA = b"{this is not json"
_ROLES = ("user", "assistant")

# The request fields the Messages API knows (the anthropic SDK's create parameters, beta ones
# included, and the sampling parameters of API version 2023-06-01); any other is refused.
_KNOWN_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "metadata",
        "tools", "tool_choice", "thinking", "temperature", "top_p", "top_k", "output_config",
        "output_format", "service_tier", "cache_control", "container", "context_management",
        "mcp_servers", "inference_geo", "speed", "diagnostics", "user_profile_id",
        "workspace_id", "billing_policy", "compaction", "fallback_credit_token", "fallbacks",
        "thread",
    }
)  # fmt: skip
# The fields /v1/messages/count_tokens knows (the SDK's count_tokens parameters, beta ones
# included): the prompt's, none of the generation's.
_COUNT_FIELDS = frozenset(
    {
        "model", "messages", "system", "tools", "tool_choice", "thinking", "output_config",
        "output_format", "cache_control", "context_management", "mcp_servers", "speed",
    }
)  # fmt: skip
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k")
# metadata.user_id: its bound, and what reads as an e-mail address in it.
_MAX_USER_ID_LENGTH = 256
_EMAIL = re.compile(r"[^\s@]+@[^\s@.]+(?:\.[^\s@.]+)+")
# The media type of Anthropic's base64 documents.
_PDF_MEDIA_TYPE = "application/pdf"
# The media types Anthropic takes for a base64 image.
_IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# The API version that removed the sampling parameters (ISO dates compare as strings).
SAMPLING_REMOVED_IN = "2026-10-21"
_TOOL_CHOICES = ("auto", "any", "tool", "none")
# What Claude thinks, in the mock: the text of every thinking block it answers with.
THOUGHT = "The user wants an answer; I will quote their words back to them."
THOUGHT_SIGNATURE = "EqoBCkgIARABGAIiQMockSignature"
_MIN_THINKING_BUDGET = 1024
_THINKING_TYPES = ("enabled", "disabled", "adaptive")
_EFFORTS = ("low", "medium", "high", "xhigh", "max")
_THINKING_DISPLAYS = ("summarized", "omitted")
# A Claude model id's family and version: claude-opus-4-7, claude-sonnet-4-20250514 (4.0),
# claude-mythos-preview (no version); Claude 3 ids (claude-3-7-sonnet) put it first.
_CLAUDE_ID = re.compile(r"claude-(?P<family>[a-z]+)(?:-(?P<major>\d+)(?:-(?P<minor>\d)(?!\d))?)?")

# Anthropic's error.type for each HTTP status it documents; other 5xx are api_error and
# other 4xx invalid_request_error.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_response(
    status: int, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    """An error in Anthropic's shape, which the anthropic client turns into its typed exceptions."""
    body = {"type": "error", "error": {"type": error_type_for(status), "message": message}}
    return web.Response(
        status=status, body=orjson.dumps(body), headers={**_JSON_HEADERS, **(headers or {})}
    )


def fault_status_response(status: int) -> web.Response:
    headers = {"retry-after": "1"} if status == 429 else None
    return error_response(status, fault_error_message(status), headers=headers)


def fault_error_message(status: int) -> str:
    """The message of Anthropic's error for a status fault, which a stream's first event
    carries too (the ``error_first`` fault)."""
    if status == 429:
        return "Number of request tokens has exceeded your rate limit (injected by x-mock-fault)."
    if status == 529:
        return "Overloaded (injected by x-mock-fault)."
    if status >= 500:
        return "Internal server error (injected by x-mock-fault)."
    return f"Injected error {status} (x-mock-fault)."


class InvalidRequestError(Exception):
    """A request Anthropic would reject with 400 invalid_request_error."""


def unknown_model(body: Body) -> str | None:
    """The body's model when Anthropic's API knows no model by that name from its shape
    alone: Vertex's ``name@version`` (Anthropic's is ``name-version``), which the real API
    refuses with a 404 not_found_error naming it."""
    doc = body.json if body.is_json and isinstance(body.json, dict) else {}
    model = doc.get("model")
    return model if isinstance(model, str) and "@" in model else None


CACHE_WRITE_HEADER = "x-mock-cache-write"
# The header's keys: Claude's two cache lifetimes, as Anthropic's cache_control names them.
_CACHE_TTLS = ("5m", "1h")


class CacheWriteSpecError(ValueError):
    """The ``x-mock-cache-write`` header cannot be parsed; the message says why."""


@dataclass(frozen=True, slots=True)
class CacheWrites:
    """Prompt tokens to report as written to Claude's 5-minute and 1-hour caches."""

    five_minutes: int = 0
    one_hour: int = 0

    @property
    def total(self) -> int:
        return self.five_minutes + self.one_hour

    def within(self, available: int) -> CacheWrites:
        """At most ``available`` tokens in all: a cache cannot hold more than the prompt."""
        one_hour = min(self.one_hour, available)
        return CacheWrites(min(self.five_minutes, available - one_hour), one_hour)


NO_CACHE_WRITES = CacheWrites()


def cache_writes(headers: Mapping[str, str]) -> CacheWrites:
    """The writes a request asks for (``5m=N;1h=M``, either key optional), none without
    the header; CacheWriteSpecError names a malformed pair."""
    spec = headers.get(CACHE_WRITE_HEADER)
    if spec is None:
        return NO_CACHE_WRITES
    counts = dict.fromkeys(_CACHE_TTLS, 0)
    for raw_pair in spec.split(";"):
        if not raw_pair.strip():
            continue
        key, _, value = (part.strip() for part in raw_pair.partition("="))
        if key not in counts:
            raise CacheWriteSpecError(
                f"{CACHE_WRITE_HEADER}: unknown key {key!r} (known keys: 5m, 1h)"
            )
        if not (value.isascii() and value.isdigit()):
            raise CacheWriteSpecError(f"{CACHE_WRITE_HEADER}: {key}={value!r} is not a count")
        counts[key] = int(value)
    return CacheWrites(counts["5m"], counts["1h"])


SERVER_TOOLS_HEADER = "x-mock-server-tool-use"
# A server tool's name as Anthropic's usage spells it before "_requests" (web_search).
_TOOL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# What Anthropic takes as a tool_use id and a tool_result's tool_use_id.
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


class ServerToolSpecError(ValueError):
    """The ``x-mock-server-tool-use`` header cannot be parsed; the message says why."""


def server_tool_requests(headers: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    """The server tool requests a request asks to be reported (``web_search=N;web_fetch=M``,
    any tool name, so tests can report one the gateway has no price for); none without
    the header. ServerToolSpecError names a malformed pair."""
    spec = headers.get(SERVER_TOOLS_HEADER)
    if spec is None:
        return ()
    counts: dict[str, int] = {}
    for raw_pair in spec.split(";"):
        if not raw_pair.strip():
            continue
        name, _, value = (part.strip() for part in raw_pair.partition("="))
        if not _TOOL_NAME.fullmatch(name):
            raise ServerToolSpecError(f"{SERVER_TOOLS_HEADER}: {name!r} is not a tool name")
        if not (value.isascii() and value.isdigit()):
            raise ServerToolSpecError(f"{SERVER_TOOLS_HEADER}: {name}={value!r} is not a count")
        counts[name] = int(value)
    return tuple(counts.items())


SERVICE_TIER_HEADER = "x-mock-service-tier"
# The tiers the header may name: the Messages API serves at these (batch is the Batches API).
_SERVED_TIERS = ("standard", "priority")
# The request's service_tier: which capacity the request may use.
_ASKED_TIERS = ("auto", "standard_only")


INFERENCE_GEO_HEADER = "x-mock-inference-geo"
# The geographies the Messages API runs a request in.
_INFERENCE_GEOS = ("global", "us")


def ran_in(headers: Mapping[str, str], asked: str | None) -> str | None:
    """Where a request asking for ``asked`` runs: there, else in the workspace's default
    geography (the header), else nowhere named."""
    if asked is not None:
        return asked
    spec = headers.get(INFERENCE_GEO_HEADER)
    if spec is None:
        return None
    geo = spec.strip()
    if geo not in _INFERENCE_GEOS:
        raise ServiceTierSpecError(f"{INFERENCE_GEO_HEADER}: {geo!r} is not a geography")
    return geo


def _asked_geo(value: object) -> str | None:
    if value is None:
        return None
    if value not in _INFERENCE_GEOS:
        raise InvalidRequestError(f"inference_geo: Input should be 'global' or 'us', got {value!r}")
    return str(value)


class ServiceTierSpecError(ValueError):
    """The ``x-mock-service-tier`` header names no tier the mock serves at."""


def served_tier(headers: Mapping[str, str], asked: str) -> str:
    """The tier that serves a request asking for ``asked`` (``auto``: any capacity, the
    organisation's Priority Tier first; ``standard_only``): ``priority`` only when the
    header gives the organisation Priority Tier capacity and the request may use it."""
    spec = headers.get(SERVICE_TIER_HEADER)
    if spec is None:
        return "standard"
    tier = spec.strip()
    if tier not in _SERVED_TIERS:
        raise ServiceTierSpecError(
            f"{SERVICE_TIER_HEADER}: {tier!r} is not a tier (known tiers: standard, priority)"
        )
    return "standard" if asked == "standard_only" else tier


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    model: str
    messages: list[dict[str, Any]]
    system: str | None  # the system prompt's text, None when absent
    max_tokens: int
    stream: bool
    stop_sequences: tuple[str, ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: dict[str, Any] | None = None
    # The JSON schema of output_config.format, when the answer must be JSON.
    output_schema: dict[str, Any] | None = None
    # Which capacity the request may use: "auto" (the default) or "standard_only".
    service_tier: str = "auto"
    # Extended thinking's budget_tokens, when the request enables it.
    thinking_budget: int | None = None
    # Whether the request asks for adaptive thinking.
    adaptive_thinking: bool = False
    # Whether the thinking block's text is left empty (thinking.display "omitted", the
    # default of Opus 4.7, Mythos and the models after them): the tokens are billed still.
    thinking_omitted: bool = False
    # The geography the request asked to run in (inference_geo); None: it named none.
    inference_geo: str | None = None
    # The prompt-cache breakpoints it marks (cache_control), in the prompt's order.
    breakpoints: tuple[Breakpoint, ...] = ()


def _blocks(content: object) -> list[Any]:
    """Content as a list of blocks: a string is shorthand for one text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def _check_content(content: object, where: str) -> None:
    """Content is a string or a list of blocks; text blocks must carry their text."""
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequestError(f"{where}: Input should be a valid string or list of blocks")
    for i, block in enumerate(content):
        # Blocks other than text (image, tool_use, ...) are accepted and count no tokens.
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequestError(f"{where}.{i}: Input should be an object with a 'type'")
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            raise InvalidRequestError(f"{where}.{i}.text: Field required")
        if block["type"] == "image":
            _check_image(block.get("source"), f"{where}.{i}.image.source")
        if block["type"] == "document":
            _check_document(block.get("source"), f"{where}.{i}.document.source")


def _check_document(source: object, where: str) -> None:
    """A base64 document: a PDF (Anthropic's only base64 document type), whose bytes are
    one (other sources, text, URLs and files, are not the mock's to check)."""
    if not isinstance(source, dict) or source.get("type") != "base64":
        return
    if source.get("media_type") != _PDF_MEDIA_TYPE:
        raise InvalidRequestError(f"{where}.base64.media_type: Input should be 'application/pdf'")
    data = source.get("data")
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
    except binascii.Error:
        raw = b""
    if not raw.startswith(b"%PDF-"):
        raise InvalidRequestError("The PDF specified was not valid.")


def _check_image(source: object, where: str) -> None:
    """A base64 image: a media type Anthropic takes, and bytes of that format when they
    are of one it knows (other sources, URLs and files, are not the mock's to fetch)."""
    if not isinstance(source, dict) or source.get("type") != "base64":
        return
    media_type = source.get("media_type")
    if media_type not in _IMAGE_MEDIA_TYPES:
        raise InvalidRequestError(
            f"{where}.base64.media_type: Input should be 'image/jpeg', 'image/png', "
            "'image/gif' or 'image/webp'"
        )
    data = source.get("data")
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
    except binascii.Error:
        raw = b""
    found = format_of(raw)
    if found is not None and f"image/{found}" != media_type:
        raise InvalidRequestError(
            f"{where}.base64.data: The image was specified using the {media_type} media "
            f"type, but the image appears to be a image/{found} image"
        )


def _check_turn_text(messages: list[dict[str, Any]]) -> None:
    """Anthropic's rules on empty turns and blank text (its own messages)."""
    last = len(messages) - 1
    for i, message in enumerate(messages):
        content = message["content"]
        final_assistant = i == last and message["role"] == "assistant"
        if content in ("", []) and not final_assistant:
            raise InvalidRequestError(
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        blocks = [] if content == "" else _blocks(content)
        texts = [block["text"] for block in blocks if block["type"] == "text"]
        if "" in texts:
            raise InvalidRequestError("messages: text content blocks must be non-empty")
        if texts and len(texts) == len(blocks) and not any(text.strip() for text in texts):
            raise InvalidRequestError(
                "messages: text content blocks must contain non-whitespace text"
            )
        ends_in_text = bool(texts) and blocks[-1]["type"] == "text"
        if final_assistant and ends_in_text and texts[-1] != texts[-1].rstrip():
            raise InvalidRequestError(
                "messages: final assistant content cannot end with trailing whitespace"
            )


def _ids(blocks: list[Any], kind: str, key: str) -> list[str]:
    return [str(block.get(key)) for block in blocks if block["type"] == kind]


def _check_tool_ids(i: int, blocks: list[Any]) -> None:
    """Tool call ids are Anthropic's own shape: another provider's id
    (``functions.get_weather:0``) is refused, in Anthropic's words."""
    for j, block in enumerate(blocks):
        key = {"tool_use": "id", "tool_result": "tool_use_id"}.get(block["type"])
        if key is not None and not _TOOL_ID.fullmatch(str(block.get(key))):
            raise InvalidRequestError(
                f"messages.{i}.content.{j}.{block['type']}.{key}: "
                f"String should match pattern '{_TOOL_ID.pattern}'"
            )


def _check_tool_results(messages: list[dict[str, Any]]) -> None:
    """Each user turn answers every tool call of the assistant turn just before it, with
    ``tool_result`` blocks that come before its other blocks, and answers nothing else."""
    for i, message in enumerate(messages):
        _check_tool_ids(i, _blocks(message["content"]))
        if message["role"] != "user" or i == 0:
            continue
        previous = messages[i - 1]
        calls = _ids(_blocks(previous["content"]), "tool_use", "id")
        if previous["role"] != "assistant":
            calls = []
        blocks = _blocks(message["content"])
        for j, block in enumerate(blocks):
            if block["type"] == "tool_result" and block.get("tool_use_id") not in calls:
                raise InvalidRequestError(
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                    f"`tool_result` blocks: {block.get('tool_use_id')}. Each `tool_result` "
                    "block must have a corresponding `tool_use` block in the previous message."
                )
        kinds = [block["type"] for block in blocks]
        if "tool_result" in kinds and kinds != sorted(kinds, key=lambda k: k != "tool_result"):
            raise InvalidRequestError(
                f"messages.{i}: tool_result blocks must come first in the content, "
                "before any other block"
            )
        answered = _ids(blocks, "tool_result", "tool_use_id")
        missing = [call for call in calls if call not in answered]
        if missing:
            raise InvalidRequestError(
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )


def _check_system(system: object) -> str | None:
    if system is None:
        return None
    if isinstance(system, list):
        for i, block in enumerate(system):
            # The real API takes only text blocks in system, unlike in messages.
            if not isinstance(block, dict) or block.get("type") != "text":
                raise InvalidRequestError(f"system.{i}: Input should be a text block")
            if not isinstance(block.get("text"), str):
                raise InvalidRequestError(f"system.{i}.text: Field required")
    elif not isinstance(system, str):
        raise InvalidRequestError("system: Input should be a valid string or list of text blocks")
    return message_text(system)


def _check_fields(doc: dict[str, Any], api_version: str | None) -> None:
    """Unknown fields, and sampling parameters the API version or their range refuses."""
    for field in doc:
        if field not in _KNOWN_FIELDS:
            raise InvalidRequestError(f"{field}: Extra inputs are not permitted")
    removed = api_version is not None and api_version >= SAMPLING_REMOVED_IN
    for field in (field for field in _SAMPLING_FIELDS if field in doc):
        if removed:
            raise InvalidRequestError(
                f"{field}: Extra inputs are not permitted (removed in anthropic-version "
                f"{SAMPLING_REMOVED_IN})"
            )
        value = doc[field]
        if field == "top_k":
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
            raise InvalidRequestError(
                f"{field}: Input should be a number between 0 and 1, got {value!r}"
            )


def _check_metadata(value: object) -> None:
    """``metadata``: an object whose one key is ``user_id``, an opaque id (Anthropic's API
    refuses one over 256 characters, and one that holds an e-mail address)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise InvalidRequestError("metadata: Input should be a valid dictionary")
    for key in value:
        if key != "user_id":
            raise InvalidRequestError(f"metadata.{key}: Extra inputs are not permitted")
    user_id = value.get("user_id")
    if user_id is None:
        return
    if not isinstance(user_id, str):
        raise InvalidRequestError("metadata.user_id: Input should be a valid string")
    if len(user_id) > _MAX_USER_ID_LENGTH:
        raise InvalidRequestError(
            f"metadata.user_id: String should have at most {_MAX_USER_ID_LENGTH} characters"
        )
    if _EMAIL.search(user_id):
        raise InvalidRequestError(
            "metadata.user_id: user_id appears to contain an email address. Please send a "
            "uuid or hash value instead"
        )


def _stop_sequences(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequestError("stop_sequences: Input should be a valid list of strings")
    if not all(item.strip() for item in value):
        raise InvalidRequestError("stop_sequences: each stop sequence must contain non-whitespace")
    return tuple(value)


def _tools(doc: dict[str, Any]) -> tuple[tuple[dict[str, Any], ...], dict[str, Any] | None]:
    tools = doc.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list) or not all(
        isinstance(tool, dict) and isinstance(tool.get("name"), str) for tool in tools
    ):
        raise InvalidRequestError("tools: Input should be a list of tools with a name")
    choice = doc.get("tool_choice")
    if choice is None:
        return tuple(tools), None
    if not isinstance(choice, dict) or choice.get("type") not in _TOOL_CHOICES:
        raise InvalidRequestError(
            "tool_choice: Input tag should be 'auto', 'any', 'tool' or 'none'"
        )
    if choice["type"] == "tool" and choice.get("name") not in [tool["name"] for tool in tools]:
        raise InvalidRequestError(f"tool_choice.name: no tool named {choice.get('name')!r}")
    return tuple(tools), choice


def _check_tools_defined(messages: list[dict[str, Any]], tools: tuple[Any, ...]) -> None:
    """Tool blocks need tools: the real API refuses a request whose history holds
    ``tool_use`` or ``tool_result`` blocks but that defines no tools (an OpenAI client's
    closing summary, sent without its tools, translated as it is)."""
    if tools:
        return
    kinds = {block["type"] for message in messages for block in _blocks(message["content"])}
    if kinds & {"tool_use", "tool_result"}:
        raise InvalidRequestError(
            "Requests which include `tool_use` or `tool_result` blocks must define tools."
        )


def _output_schema(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of ``output_config.format`` (or the beta's older ``output_format``)."""
    config = doc.get("output_config")
    found = config.get("format") if isinstance(config, dict) else doc.get("output_format")
    if found is None:
        return None
    schema = found.get("schema") if isinstance(found, dict) else None
    if found.get("type") != "json_schema" or not isinstance(schema, dict):
        raise InvalidRequestError("output_config.format: expected a json_schema with a schema")
    return schema


def _thinking_modes(model: str) -> tuple[str, ...]:
    """The thinking types ``model`` takes besides ``disabled``, as Anthropic lists them:
    a budget only before Claude Opus 4.6 and Sonnet 4.6, which take both (the budget
    deprecated), adaptive only from Opus 4.7 on, in the 5 generation, Mythos and Fable.
    An id the mock cannot read takes both."""
    if "claude-3-" in model.lower():
        return ("enabled",)
    found = _CLAUDE_ID.search(model.lower())
    if found is None:
        return ("enabled", "adaptive")
    family = found["family"]
    if family in ("mythos", "fable"):
        return ("adaptive",)
    if found["major"] is None:
        return ("enabled", "adaptive")
    version = (int(found["major"]), int(found["minor"] or 0))
    if version < (4, 6):
        return ("enabled",)
    if version >= (5, 0) or (family == "opus" and version >= (4, 7)):
        return ("adaptive",)
    return ("enabled", "adaptive")


def _thinking_omitted(doc: dict[str, Any], model: str) -> bool:
    """Whether the thinking block's text is left empty: ``thinking.display`` says so, or
    says nothing to a model whose default is ``omitted`` (Claude Opus 4.7 and later, the 5
    generation, Mythos and Fable); ``summarized`` was the default before them."""
    thinking = doc.get("thinking")
    display = thinking.get("display") if isinstance(thinking, dict) else None
    if display is not None:
        if display not in _THINKING_DISPLAYS:
            raise InvalidRequestError("thinking.display: Input should be 'summarized' or 'omitted'")
        return bool(display == "omitted")
    found = _CLAUDE_ID.search(model.lower())
    if found is None or found["major"] is None:
        return found is not None and found["family"] in ("mythos", "fable")
    version = (int(found["major"]), int(found["minor"] or 0))
    return (
        found["family"] in ("mythos", "fable")
        or version >= (5, 0)
        or (found["family"] == "opus" and version >= (4, 7))
    )


def _check_effort(doc: dict[str, Any]) -> None:
    config = doc.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if effort is not None and effort not in _EFFORTS:
        raise InvalidRequestError(
            "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
        )


def checked_thinking(doc: dict[str, Any], model: str, max_tokens: int) -> tuple[int | None, bool]:
    """Extended thinking's budget (None without one) and whether thinking is adaptive,
    checked as the real API checks a request that turns thinking on (messages quoted from
    its answers where known)."""
    _check_effort(doc)
    thinking = doc.get("thinking")
    if thinking is None:
        return None, False
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in _THINKING_TYPES:
        raise InvalidRequestError(
            "thinking: Input tag should be 'enabled', 'disabled' or 'adaptive'"
        )
    if kind == "disabled":
        return None, False
    if kind not in _thinking_modes(model):
        if kind == "enabled":
            raise InvalidRequestError(
                '"thinking.type.enabled" is not supported for this model. Use '
                '"thinking.type.adaptive" and "output_config.effort" to control thinking '
                "behavior."
            )
        raise InvalidRequestError('"thinking.type.adaptive" is not supported for this model.')
    budget: int | None = None
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise InvalidRequestError("thinking.enabled.budget_tokens: Field required")
        if budget < _MIN_THINKING_BUDGET:
            raise InvalidRequestError(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            )
        if max_tokens <= budget:
            raise InvalidRequestError("`max_tokens` must be greater than `thinking.budget_tokens`.")
    temperature = doc.get("temperature")
    if temperature is not None and temperature != 1:
        raise InvalidRequestError("`temperature` may only be set to 1 when thinking is enabled.")
    top_p = doc.get("top_p")
    if isinstance(top_p, int | float) and top_p < 0.95:
        raise InvalidRequestError(
            "`top_p` must be greater than or equal to 0.95 or unset when thinking is enabled."
        )
    if doc.get("top_k") is not None:
        raise InvalidRequestError("`top_k` must be unset when thinking is enabled.")
    choice = doc.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise InvalidRequestError("Thinking may not be enabled when tool_choice forces tool use.")
    return budget, kind == "adaptive"


def _check_final_assistant_thinks(messages: list[dict[str, Any]]) -> None:
    """With thinking on, the assistant turn the request continues (a prefill, or the one
    whose tool calls the last user turn answers) must start with its thinking block."""
    last = len(messages) - 1
    if messages[last]["role"] == "assistant":
        at = last
    elif last >= 1 and _ids(_blocks(messages[last]["content"]), "tool_result", "tool_use_id"):
        at = last - 1
    else:
        return
    blocks = _blocks(messages[at]["content"])
    first = blocks[0].get("type") if blocks and isinstance(blocks[0], dict) else None
    if first not in ("thinking", "redacted_thinking"):
        raise InvalidRequestError(
            f"messages.{at}.content.0.type: Expected `thinking` or `redacted_thinking`, but "
            f"found `{first}`. When `thinking` is enabled, a final `assistant` message must "
            "start with a thinking block (preceeding the lastmost set of `tool_use` and "
            "`tool_result` blocks)."
        )


def _check_messages(messages: object) -> list[dict[str, Any]]:
    if messages is None:
        raise InvalidRequestError("messages: Field required")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(f"messages.{i}: Input should be an object")
        if message.get("role") not in _ROLES:
            raise InvalidRequestError(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise InvalidRequestError(f"messages.{i}.content: Field required")
        _check_content(message["content"], f"messages.{i}.content")
    return messages


def count_request_tokens(body: Body) -> int:
    """Validate a count_tokens body as the real API does and count its input tokens.

    The body is a Messages body without the generation fields (``max_tokens``,
    ``stream``, sampling...), which the real endpoint refuses as extra inputs. The
    count is what ``usage.input_tokens`` of a Messages call with the same prompt reports.
    """
    if not body.is_json or not isinstance(body.json, dict):
        raise InvalidRequestError("The request body is not valid JSON: expected a JSON object.")
    doc: dict[str, Any] = body.json
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model: Field required")
    messages = _check_messages(doc.get("messages"))
    for field in doc:
        if field not in _COUNT_FIELDS:
            raise InvalidRequestError(f"{field}: Extra inputs are not permitted")
    _check_turn_text(messages)
    _check_tool_results(messages)
    tools, _ = _tools(doc)
    return input_token_count(messages, _check_system(doc.get("system")), tools)


def input_token_count(
    messages: list[dict[str, Any]], system: str | None, tools: Iterable[Mapping[str, Any]] = ()
) -> int:
    """The prompt's input tokens: the messages, the system prompt as one more message, and
    the tool definitions, each the tokens of its JSON text (Claude reads them as part of
    its prompt, and bills them so: a count that left them out could not tell a body that
    carries them from one that does not)."""
    tokens = prompt_tokens(messages)
    if system is not None:
        tokens += count_tokens(system) + MESSAGE_OVERHEAD_TOKENS
    return tokens + sum(count_tokens(orjson.dumps(tool).decode()) for tool in tools)


def parse_messages_request(body: Body, api_version: str | None = None) -> MessagesRequest:
    """Validate the request as the real API does (module docstring); ``api_version`` is the
    ``anthropic-version`` header, which decides whether sampling parameters exist."""
    if not body.is_json or not isinstance(body.json, dict):
        raise InvalidRequestError("The request body is not valid JSON: expected a JSON object.")
    doc: dict[str, Any] = body.json
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model: Field required")
    max_tokens = doc.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequestError("max_tokens: Field required")
    # bool is an int subclass; `"max_tokens": true` must not mean 1.
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequestError(
            f"max_tokens: Input should be an integer >= 1, got {max_tokens!r}"
        )
    messages = _check_messages(doc.get("messages"))
    _check_fields(doc, api_version)
    _check_metadata(doc.get("metadata"))
    _check_turn_text(messages)
    _check_tool_results(messages)
    system = _check_system(doc.get("system"))
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError("stream: Input should be a valid boolean")
    tools, tool_choice = _tools(doc)
    _check_tools_defined(messages, tools)
    thinking_budget, adaptive_thinking = checked_thinking(doc, model, max_tokens)
    if thinking_budget is not None or adaptive_thinking:
        _check_final_assistant_thinks(messages)
    omitted = _thinking_omitted(doc, model)
    try:
        breakpoints = tuple(anthropic_breakpoints(doc, input_token_count))
    except BreakpointError as exc:
        raise InvalidRequestError(str(exc)) from None
    return MessagesRequest(
        model,
        messages,
        system,
        max_tokens,
        bool(stream),
        _stop_sequences(doc.get("stop_sequences")),
        tools,
        tool_choice,
        _output_schema(doc),
        _asked_tier(doc.get("service_tier", "auto")),
        thinking_budget,
        adaptive_thinking,
        omitted,
        _asked_geo(doc.get("inference_geo")),
        breakpoints,
    )


def _asked_tier(value: object) -> str:
    if value not in _ASKED_TIERS:
        raise InvalidRequestError(
            f"service_tier: Input should be 'auto' or 'standard_only', got {value!r}"
        )
    return str(value)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One ``tool_use`` block: of a forced tool use, or scripted (``x-mock-tool-calls``)."""

    name: str
    input: dict[str, Any]
    # The input's JSON as streamed, one input_json_delta each; None: one piece per token.
    scripted_pieces: tuple[str, ...] | None = None

    @property
    def pieces(self) -> list[str]:
        """The input's JSON, as its input_json_delta pieces."""
        if self.scripted_pieces is not None:
            return list(self.scripted_pieces)
        return token_pieces(orjson.dumps(self.input).decode())


@dataclass(frozen=True, slots=True)
class Reply:
    pieces: list[str]
    stop_reason: str
    input_tokens: int
    # Of input_tokens, those reported as read from the cache (the `cached` fault key).
    cached_tokens: int = 0
    # Of input_tokens, those reported as written to the caches (x-mock-cache-write).
    cache_writes: CacheWrites = NO_CACHE_WRITES
    # The stop sequence that ended the reply, when one did.
    stop_sequence: str | None = None
    # A forced tool use answers these instead of text.
    calls: tuple[ToolCall, ...] = ()
    # Server tool requests to report (x-mock-server-tool-use): (tool name, count).
    server_tools: tuple[tuple[str, int], ...] = ()
    # Blocks the answer starts with, whole (x-mock-result-blocks): server tools' results.
    result_blocks: tuple[dict[str, Any], ...] = ()
    # What Claude thought first, one piece per token (extended thinking); none without.
    thought: tuple[str, ...] = ()
    # The thought is billed but its text not shown (thinking.display "omitted").
    thought_omitted: bool = False
    # The web search a text answer ran first, its page cited by the text (web_search).
    search: WebSearch | None = None

    @property
    def searched(self) -> WebSearch | None:
        """The search, when the answer is text it can cite (tool calls end a turn before)."""
        return self.search if self.pieces and not self.calls else None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def output_tokens(self) -> int:
        # The thinking, the text said before the calls, if any, and the calls' inputs.
        return len(self.thought) + len(self.pieces) + sum(len(call.pieces) for call in self.calls)

    def input_usage(self) -> dict[str, Any]:
        """The input side of usage: Anthropic's input_tokens excludes cache reads and writes."""
        writes = self.cache_writes
        usage: dict[str, Any] = {
            "input_tokens": self.input_tokens - self.cached_tokens - writes.total
        }
        if self.cached_tokens:
            usage["cache_read_input_tokens"] = self.cached_tokens
        if writes.total:
            usage["cache_creation_input_tokens"] = writes.total
            usage["cache_creation"] = {
                "ephemeral_5m_input_tokens": writes.five_minutes,
                "ephemeral_1h_input_tokens": writes.one_hour,
            }
        return usage

    def server_tool_use(self, *, done: bool = True) -> dict[str, Any]:
        """``usage.server_tool_use`` as Anthropic reports it, when the reply ran server tools:
        ``{"<tool>_requests": N}``; before they ran (a stream's ``message_start``), zeros."""
        if not self.server_tools:
            return {}
        counts = {f"{name}_requests": count if done else 0 for name, count in self.server_tools}
        return {"server_tool_use": counts}

    def writing(self, asked: CacheWrites) -> Reply:
        """This reply reporting the cache writes asked for, within the uncached prompt."""
        return replace(self, cache_writes=asked.within(self.input_tokens - self.cached_tokens))

    def blocks(self, message_id: str) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Each content block as it starts in a stream, with the deltas that complete it:
        the text (when there is some, or nothing else), then one block per tool call."""
        blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        if self.thought:
            shown = () if self.thought_omitted else self.thought
            deltas = [{"type": "thinking_delta", "thinking": piece} for piece in shown]
            deltas.append({"type": "signature_delta", "signature": THOUGHT_SIGNATURE})
            blocks.append(({"type": "thinking", "thinking": ""}, deltas))
        blocks.extend((block, []) for block in self.result_blocks)
        if (search := self.searched) is not None:
            blocks.extend(search.call_blocks(message_id))
            blocks.extend(search.text_blocks(self.pieces))
        elif self.pieces or not self.calls:
            deltas = [{"type": "text_delta", "text": piece} for piece in self.pieces]
            blocks.append(({"type": "text", "text": ""}, deltas))
        for k, call in enumerate(self.calls):
            # Tool use ids look like Anthropic's (toolu_...), unique per answer.
            start = {"type": "tool_use", "id": f"toolu{message_id[3:]}_{k}", "name": call.name}
            # Anthropic opens each input with an empty piece.
            pieces = ["", *call.pieces]
            deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
            blocks.append(({**start, "input": {}}, deltas))
        return blocks

    def content(self, message_id: str) -> list[dict[str, Any]]:
        """The content blocks of the whole message."""
        blocks = self.blocks(message_id)
        # The tool_use blocks are the last ones; a text block, if any, comes before them.
        first_call = len(blocks) - len(self.calls)
        content: list[dict[str, Any]] = []
        if self.thought:
            thinking = "" if self.thought_omitted else "".join(self.thought)
            content.append(
                {"type": "thinking", "thinking": thinking, "signature": THOUGHT_SIGNATURE}
            )
        content.extend(self.result_blocks)
        if (search := self.searched) is not None:
            content.extend(search.call_content(message_id))
            content.extend(search.text_content(self.pieces))
        elif first_call > len(content):
            content.append({"type": "text", "text": self.text})
        return content + [
            {**start, "input": call.input}
            for (start, _), call in zip(blocks[first_call:], self.calls, strict=True)
        ]


RESULT_BLOCKS_HEADER = "x-mock-result-blocks"


def result_blocks(headers: Mapping[str, str]) -> tuple[dict[str, Any], ...]:
    """The blocks ``x-mock-result-blocks`` asks the answer to start with (none without it)."""
    value = headers.get(RESULT_BLOCKS_HEADER)
    if value is None:
        return ()
    try:
        blocks = orjson.loads(value)
    except orjson.JSONDecodeError:
        blocks = None
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise ScriptError(f"{RESULT_BLOCKS_HEADER} must be a JSON array of content blocks")
    return tuple(blocks)


def _reply_text(req: MessagesRequest) -> tuple[str, str | None]:
    """The text to answer (JSON when output_config asks for it), cut before the first stop
    sequence it contains, and that sequence."""
    text = reply_text(req.messages)
    if req.output_schema is not None:
        text = orjson.dumps(instance(req.output_schema, text)).decode()
    found = [(text.find(stop), stop) for stop in req.stop_sequences if stop and stop in text]
    if not found:
        return text, None
    at, stop = min(found)
    return text[:at], stop


def _forced_calls(req: MessagesRequest) -> tuple[ToolCall, ...]:
    """The tool calls a forced tool use answers with (none for auto, none or no choice)."""
    choice = req.tool_choice
    if choice is None or choice["type"] not in ("any", "tool"):
        return ()
    if choice["type"] == "tool":
        tools = [tool for tool in req.tools if tool["name"] == choice["name"]][:1]
    else:
        tools = list(req.tools[:1] if choice.get("disable_parallel_tool_use") else req.tools)
    quoted = reply_text(req.messages)
    calls = []
    for tool in tools:
        schema = tool.get("input_schema")
        built = instance(schema if isinstance(schema, dict) else {}, quoted)
        calls.append(ToolCall(tool["name"], built if isinstance(built, dict) else {}))
    return tuple(calls)


def build_reply(req: MessagesRequest, fault: Fault) -> Reply:
    input_tokens = input_token_count(req.messages, req.system, req.tools)
    cached = fault.cached_part(input_tokens)
    calls = _forced_calls(req)
    if calls:
        return Reply([], "tool_use", input_tokens, cached, calls=calls)
    # A budget is at least 1,024 tokens: the thought always fits, and takes its part of
    # max_tokens before the answer. Adaptive thinking has no least: a max_tokens below
    # the thought cuts it, and leaves the answer no room.
    thinks = req.thinking_budget is not None or req.adaptive_thinking
    thought = tuple(token_pieces(THOUGHT))[: req.max_tokens] if thinks else ()
    text, stop = _reply_text(req)
    pieces, truncated = reply_pieces(
        req.messages, max_tokens=req.max_tokens - len(thought), chunks=fault.chunks, text=text
    )
    omitted = req.thinking_omitted
    if truncated:
        reply = Reply(pieces, "max_tokens", input_tokens, cached, thought=thought)
    elif stop is not None:
        reply = Reply(
            pieces, "stop_sequence", input_tokens, cached, stop_sequence=stop, thought=thought
        )
    else:
        reply = Reply(pieces, "end_turn", input_tokens, cached, thought=thought)
    return replace(reply, thought_omitted=omitted) if omitted else reply


def scripted_anthropic_reply(
    reply: Reply, pieces: list[str] | None, calls: list[ScriptedCall] | None
) -> Reply:
    """The reply the test chose: its text (none when it chose only tool calls), then its tool
    calls, which end the answer with ``tool_use`` as on the real API."""
    text = pieces or []
    if calls is None:
        return replace(reply, pieces=text, stop_reason="end_turn", stop_sequence=None, calls=())
    tool_calls = tuple(ToolCall(call.name, call.input, call.pieces) for call in calls)
    stop = "max_tokens" if cut_short(calls) else "tool_use"
    return replace(reply, pieces=text, stop_reason=stop, stop_sequence=None, calls=tool_calls)


def _has_credentials(request: web.Request) -> bool:
    """An API key in ``x-api-key``, or a bearer token (how the anthropic client sends it)."""
    if request.headers.get(API_KEY_HEADER, "").strip():
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def _abort(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Drop the connection so the client sees a reset instead of a (complete) response."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp still wants a response object; finishing it fails quietly on the closed transport.
    return response if response is not None else web.Response(status=500)


# Anthropic's error inside a stream whose 200 has left: an SSE ``error`` event, after
# which the stream ends without message_delta or message_stop. Overloaded is the one
# Anthropic documents as happening mid-stream.
STREAM_ERROR = {
    "type": "error",
    "error": {"type": "overloaded_error", "message": "Overloaded (injected by x-mock-fault)"},
}


def first_error(status: int) -> dict[str, Any]:
    """A stream's first event when Anthropic fails it before ``message_start`` (the
    ``error_first`` fault): the error of that status's answer."""
    error = {"type": error_type_for(status), "message": fault_error_message(status)}
    return {"type": "error", "error": error}


async def _fail_stream(
    response: web.StreamResponse,
    send: Callable[[str, dict[str, Any]], Awaitable[None]],
    error: dict[str, Any] = STREAM_ERROR,
) -> web.StreamResponse:
    """End a stream with Anthropic's error event (the ``error_after`` and ``error_first``
    faults)."""
    await send("error", error)
    await response.write_eof()
    return response


class AnthropicEndpoints:
    """Request handlers for Anthropic's endpoints; one instance per mock application."""

    def __init__(self, *, chunk_delay_s: float, default_fault: Fault) -> None:
        self._chunk_delay_s = chunk_delay_s
        self._default_fault = default_fault
        self._ids = itertools.count(1)
        self._prompt_cache = PromptCache()

    async def _precheck(self, request: web.Request) -> web.Response | Fault:
        """Authentication, the API version and the request's fault; a response ends the request."""
        if not _has_credentials(request):
            return error_response(401, MISSING_KEY_MESSAGE)
        if not request.headers.get(VERSION_HEADER, "").strip():
            return error_response(400, "anthropic-version: header is required")
        spec = request.headers.get(FAULT_HEADER)
        try:
            fault = self._default_fault if spec is None else parse_fault(spec)
        except FaultSpecError as exc:
            return error_response(400, str(exc))
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.status is not None:
            return fault_status_response(fault.status)
        if fault.error_body is not None:
            return error_in_success(fault.error_body)
        return fault

    async def count_tokens(self, request: web.Request, body: Body) -> web.StreamResponse:
        """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, generating nothing."""
        fault = await self._precheck(request)
        if isinstance(fault, web.Response):
            return fault
        if (model := unknown_model(body)) is not None:
            return error_response(404, f"model: {model}")
        try:
            tokens = count_request_tokens(body)
        except InvalidRequestError as exc:
            return error_response(400, str(exc))
        return web.Response(body=orjson.dumps({"input_tokens": tokens}), headers=_JSON_HEADERS)

    async def messages(self, request: web.Request, body: Body) -> web.StreamResponse:
        fault = await self._precheck(request)
        if isinstance(fault, web.Response):
            return fault
        if (model := unknown_model(body)) is not None:
            return error_response(404, f"model: {model}")
        try:
            req = parse_messages_request(body, request.headers.get(VERSION_HEADER))
        except InvalidRequestError as exc:
            return error_response(400, str(exc))
        try:
            scripted = scripted_pieces(request.headers)
            scripted_calls = scripted_tool_calls(request.headers)
            writes = cache_writes(request.headers)
            server_tools = server_tool_requests(request.headers)
            tier = served_tier(request.headers, req.service_tier)
            geo = ran_in(request.headers, req.inference_geo)
            results = result_blocks(request.headers)
        except (ScriptError, CacheWriteSpecError, ServerToolSpecError, ServiceTierSpecError) as exc:
            return error_response(400, str(exc))
        reply = replace(build_reply(req, fault).writing(writes), server_tools=server_tools)
        if req.breakpoints and writes == NO_CACHE_WRITES and not reply.cached_tokens:
            # The body's breakpoints, when the test asked for no counts of its own.
            use = self._prompt_cache.use(list(req.breakpoints))
            reply = replace(
                reply,
                cached_tokens=use.read,
                cache_writes=CacheWrites(use.five_minutes, use.one_hour),
            )
        if scripted is not None or scripted_calls is not None:
            reply = scripted_anthropic_reply(reply, scripted, scripted_calls)
        search = asked_search(req.tools, req.messages)
        reply = replace(reply, result_blocks=results, search=search)
        if reply.searched is not None and not server_tools:
            # Anthropic reports the search it ran; a test's own counts stand instead.
            reply = replace(reply, server_tools=(("web_search", 1),))
        message_id = f"msg_mock_{next(self._ids)}"
        where = {} if geo is None else {"inference_geo": geo}
        if req.stream:
            return await self._stream(request, req, reply, fault, message_id, tier, where)
        if fault.reset_after is not None:
            return _abort(request)
        if fault.garbage:
            return web.Response(body=_GARBAGE, headers=_JSON_HEADERS)
        document = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": reply.content(message_id),
            "stop_reason": reply.stop_reason,
            "stop_sequence": reply.stop_sequence,
            "usage": {
                **reply.input_usage(),
                "output_tokens": reply.output_tokens,
                **reply.server_tool_use(),
                "service_tier": tier,
                **where,
            },
        }
        return web.Response(body=orjson.dumps(document), headers=_JSON_HEADERS)

    async def _stream(
        self,
        request: web.Request,
        req: MessagesRequest,
        reply: Reply,
        fault: Fault,
        message_id: str,
        tier: str,
        where: dict[str, str],
    ) -> web.StreamResponse:
        def event(name: str, data: dict[str, Any]) -> bytes:
            payload = _GARBAGE_DATA if fault.garbage else orjson.dumps(data)
            return b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n"

        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        # One write per event, so each reaches the client as its own HTTP chunk.
        writes = 0
        interval = self._chunk_delay_s if fault.interval_s is None else fault.interval_s

        async def send(name: str, data: dict[str, Any]) -> None:
            nonlocal writes
            pause = fault.pause_before_event(writes, interval)
            if pause:
                await asyncio.sleep(pause)
            writes += 1
            await response.write(event(name, data))

        start_message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Anthropic reports the input up front and a placeholder output count of 1,
            # and no server tool request yet: they run while the answer streams.
            "usage": {
                **reply.input_usage(),
                "output_tokens": 1,
                **reply.server_tool_use(done=False),
                # Anthropic names the tier up front; message_delta's usage has no such field.
                "service_tier": tier,
                **where,
            },
        }
        blocks = reply.blocks(message_id)
        last = len(blocks) - 1
        sent = 0
        try:
            if fault.error_first is not None:
                # Before message_start: Anthropic never began the message.
                return await _fail_stream(response, send, first_error(fault.error_first))
            await send("message_start", {"type": "message_start", "message": start_message})
            for index, (block, deltas) in enumerate(blocks):
                await send(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": block},
                )
                if index == 0:
                    await send("ping", {"type": "ping"})
                for delta in deltas:
                    if sent == fault.reset_after:
                        return _abort(request, response)
                    if sent == fault.error_after:
                        return await _fail_stream(response, send)
                    if sent == fault.end_after:
                        return response  # aiohttp ends the body: a clean, early end
                    if sent == fault.end_inside:
                        # Half the delta's event, then the body's clean end.
                        whole = event(
                            "content_block_delta",
                            {"type": "content_block_delta", "index": index, "delta": delta},
                        )
                        await response.write(whole[: len(whole) // 2])
                        return response
                    sent += 1
                    await send(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    )
                if index == last and fault.reset_after is not None:
                    # Fewer pieces than reset_after: the stream must still never finish.
                    return _abort(request, response)
                if index == last and fault.error_after is not None:
                    # Fewer pieces than error_after: the stream must still fail.
                    return await _fail_stream(response, send)
                if index == last and fault.end_after is not None:
                    # Fewer pieces than end_after: the stream must still end early.
                    return response
                if index == last and fault.end_inside is not None:
                    # Fewer pieces than end_inside: the stream must still end inside one.
                    whole = event(
                        "content_block_stop", {"type": "content_block_stop", "index": index}
                    )
                    await response.write(whole[: len(whole) // 2])
                    return response
                await send("content_block_stop", {"type": "content_block_stop", "index": index})
            stop = {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence}
            await send(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": stop,
                    "usage": {"output_tokens": reply.output_tokens, **reply.server_tool_use()},
                },
            )
            await send("message_stop", {"type": "message_stop"})
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream; nothing left to tell it
        return response

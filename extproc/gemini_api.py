"""Gemini's native API (generateContent), as clients send it to the gateway.

Google's ``google-genai`` SDK, Gemini CLI and ADK call
``POST .../models/{model}:generateContent`` for one JSON answer,
``:streamGenerateContent?alt=sse`` for Server-Sent Events and ``:countTokens`` for a
count Google never bills. The model and the operation are the path's last segment (the
SDKs may encode its colon); the body names neither, and asks for no stream: the path
does. The gateway sends the same body to Google's models on Vertex AI, which serves
Gemini's bodies and answers unchanged.

This module reads what the gateway needs of such a request: which model and operation
the path names, whether the body is one Gemini accepts in shape (checked before the
quota counts the request, so a malformed body costs nothing), its prompt as the quota
estimates it (the text of the system instruction and of every content's parts, function
calls and results, code and its output, text files sent inline, the tool definitions and
the structured output's schema), and the completion allowance
(``generationConfig.maxOutputTokens``, once per candidate, of which Gemini generates at
most ``MAX_CANDIDATES``), which a hard cap lowers in place. A stream must ask for
Server-Sent Events (``?alt=sse``); a token count of a whole ``generateContentRequest`` is
unwrapped into the form Vertex's takes.

Google's REST API takes each field in camelCase, as the SDKs send it, or in snake_case
(``generation_config.max_output_tokens``); camelCase is read first. A body giving a field
the quota reads in both spellings is refused (400 ``ambiguous_body``). A hard cap writes
the spelling the body already uses, so the body never names a field twice.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote

from extproc.attached_text import encoded_chars, is_text_media_type
from extproc.errors import BadRequestError, NotFoundError
from extproc.quota.estimate import CHARS_PER_TOKEN, PER_MESSAGE_OVERHEAD, json_chars, string_chars

GENERATE_CONTENT = "generateContent"
STREAM_GENERATE_CONTENT = "streamGenerateContent"
COUNT_TOKENS = "countTokens"
# The operations served, and whether each streams its answer.
_SERVED = {GENERATE_CONTENT: False, STREAM_GENERATE_CONTENT: True, COUNT_TOKENS: False}
_NOT_SERVED = (
    "no Gemini API operation at this path; expected /<model>: followed by "
    f"{GENERATE_CONTENT}, {STREAM_GENERATE_CONTENT} or {COUNT_TOKENS}"
)

# Each field the gateway reads, in the spellings Google's REST API takes, camelCase first
# (the guards read the public ones too: guardrails.gemini_text, guardrails.enrichment).
CONTENTS = ("contents",)
_PARTS = ("parts",)
SYSTEM = ("systemInstruction", "system_instruction")
_TOOLS = ("tools",)
GENERATION_CONFIG = ("generationConfig", "generation_config")
_MAX_OUTPUT = ("maxOutputTokens", "max_output_tokens")
_CANDIDATES = ("candidateCount", "candidate_count")
# The structured output's schema, in either of its forms: the model reads it, and
# Google counts it toward the prompt ("the size of the response schema counts towards
# the input token limit").
RESPONSE_SCHEMAS = (
    ("responseSchema", "response_schema"),
    ("responseJsonSchema", "response_json_schema"),
)
REQUEST = ("generateContentRequest", "generate_content_request")
FUNCTION_CALL = ("functionCall", "function_call")
FUNCTION_RESPONSE = ("functionResponse", "function_response")
CODE = ("executableCode", "executable_code")
CODE_RESULT = ("codeExecutionResult", "code_execution_result")
INLINE_DATA = ("inlineData", "inline_data")
_MIME_TYPE = ("mimeType", "mime_type")
# The most candidates Gemini generates for one request (Vertex's range is 1 to 8). Each
# reserves its maxOutputTokens: unbounded, one request reserved all a token budget had
# left, refusing the subject's other requests while it ran, and a hard cap turned it into
# a 429 that waiting never helps.
MAX_CANDIDATES = 8


def model_and_operation(rest: str) -> tuple[str, str]:
    """The model (decoded once) and the operation that ``rest``, the path after the
    route's prefix without its query, names: ``/{model}:{operation}``.

    The model is one segment: the SDKs encode a ``/`` in it, and a raw one is a path
    Gemini's API does not serve (``tunedModels/...``). Anything but a served operation
    after a non-empty model is a 404 that says what is served, as Google's would be.
    """
    segment = rest.removeprefix("/")
    model, colon, operation = unquote(segment).rpartition(":")
    if "/" in segment or not colon or not model or operation not in _SERVED:
        raise NotFoundError(_NOT_SERVED)
    return model, operation


def counts_tokens(path: str) -> bool:
    """Whether a request path (query and all) names ``countTokens``: the routing stage
    gives such a request its route's twin before the body comes."""
    return unquote(path.partition("?")[0]).rstrip("/").endswith(":" + COUNT_TOKENS)


# Operations Gemini's API takes on a model (``POST .../models/{model}:{operation}``),
# served here or not: a path ending in one is a Gemini call wherever it lands.
_MODEL_OPERATIONS = frozenset(
    {*_SERVED, "embedContent", "batchEmbedContents", "batchGenerateContent", "predict"}
)


def gemini_call(path: str) -> tuple[str, str] | None:
    """The model and operation of a path (query and all) shaped as a call of Gemini's
    API on a model (``.../models/{model}:generateContent``), or None."""
    segment = unquote(path.partition("?")[0].rstrip("/").rpartition("/")[2])
    model, colon, operation = segment.rpartition(":")
    if colon and model and operation in _MODEL_OPERATIONS:
        return model, operation
    return None


def streams(operation: str) -> bool:
    """Whether the operation answers with a stream (``streamGenerateContent``)."""
    return _SERVED.get(operation, False)


def check_stream_query(query: str) -> None:
    """Refuse a stream that does not ask for Server-Sent Events (``?alt=sse``): Google
    answers it with one JSON array of answers, which the gateway does not serve; sent as
    events, the client's reader of that array could not parse them."""
    if parse_qs(query).get("alt") != ["sse"]:
        raise BadRequestError(
            f"{STREAM_GENERATE_CONTENT} is served as Server-Sent Events only: add ?alt=sse "
            "(as Google's SDKs and Gemini CLI do)",
            param="alt",
        )


# What Vertex's CountTokensRequest takes of a GenerateContentRequest, at its top level.
_VERTEX_COUNTED = (*CONTENTS, *SYSTEM, *_TOOLS, *GENERATION_CONFIG)


def vertex_count_body(body: dict[str, Any]) -> dict[str, Any] | None:
    """The countTokens body Vertex takes for ``body``: a ``generateContentRequest`` (the
    Gemini API's way to count a system instruction or tools) unwrapped into the fields
    Vertex's own request has at its top level (its ``model`` names the Gemini API's
    resource, Vertex's is in the path); None when the body needs no change."""
    if _field(body, CONTENTS) is not None:
        return None
    request = _field(body, REQUEST)
    if not isinstance(request, dict):
        return None
    return {key: value for key, value in request.items() if key in _VERTEX_COUNTED}


def check_body(body: dict[str, Any], operation: str, max_contents: int | None = None) -> None:
    """Refuse a body Gemini would refuse for its shape, naming the field as the body spells
    it (``contents[0].parts``); Google checks the rest, unknown fields included.

    A field the quota reads given in both spellings is refused (``_one_spelling``), and
    so are more ``contents`` than ``max_contents`` (``limits.max_messages``, the bound on
    every API's conversation). countTokens takes ``contents``, or a whole
    ``generateContentRequest`` checked as one."""
    _one_spelling(body, "", (REQUEST,))
    if operation == COUNT_TOKENS and _field(body, CONTENTS) is None:
        key, request = _named(body, REQUEST)
        if request is not None:
            if not isinstance(request, dict):
                raise BadRequestError(f"'{key}' must be an object", param=key)
            _check_request(request, f"{key}.", max_contents)
            return
    _check_request(body, "", max_contents)


def _check_request(body: dict[str, Any], where: str, max_contents: int | None) -> None:
    """A GenerateContentRequest's contents and the counts of its ``generationConfig``."""
    contents = _field(body, CONTENTS)
    if not isinstance(contents, list):
        raise BadRequestError(
            f"'{where}contents' is required and must be an array of contents",
            param=f"{where}contents",
        )
    if max_contents is not None and len(contents) > max_contents:
        raise BadRequestError(
            f"'{where}contents' has {len(contents)} entries; the limit is {max_contents}",
            param=f"{where}contents",
        )
    for index, content in enumerate(contents):
        _check_content(content, f"{where}contents[{index}]")
    _one_spelling(body, where, (SYSTEM, GENERATION_CONFIG))
    key, config = _named(body, GENERATION_CONFIG)
    if config is None:
        return
    if not isinstance(config, dict):
        raise BadRequestError(f"'{where}{key}' must be an object", param=f"{where}{key}")
    _one_spelling(config, f"{where}{key}.", (_MAX_OUTPUT, _CANDIDATES, *RESPONSE_SCHEMAS))
    name, value = _named(config, _MAX_OUTPUT)
    if value is not None and _positive(value) is None:
        param = f"{where}{key}.{name}"
        raise BadRequestError(f"'{param}' must be an integer of at least 1", param=param)
    name, value = _named(config, _CANDIDATES)
    count = _positive(value)
    if value is not None and (count is None or count > MAX_CANDIDATES):
        param = f"{where}{key}.{name}"
        raise BadRequestError(
            f"'{param}' must be an integer from 1 to {MAX_CANDIDATES}", param=param
        )


def _one_spelling(
    container: dict[str, Any], where: str, fields: tuple[tuple[str, ...], ...]
) -> None:
    """Refuse a field given in both spellings (``generationConfig`` and
    ``generation_config``). The quota reads the camelCase one; were Google to read the
    other, a client could name a small allowance in one and a large one in the other,
    past the reservation and the hard cap."""
    for names in fields:
        given = [name for name in names if container.get(name) is not None]
        if len(given) > 1:
            param = f"{where}{given[0]}"
            raise BadRequestError(
                f"'{param}' is given twice, as {' and '.join(repr(n) for n in given)}:"
                " give it once",
                param=param,
                code="ambiguous_body",
            )


def _check_content(content: Any, where: str) -> None:
    """One content: an object whose ``parts``, when given, are objects. A content without
    parts is Google's to refuse."""
    if not isinstance(content, dict):
        raise BadRequestError(f"'{where}' must be an object with 'role' and 'parts'", param=where)
    parts = _field(content, _PARTS)
    if parts is None:
        return
    if not isinstance(parts, list):
        raise BadRequestError(f"'{where}.parts' must be an array of parts", param=f"{where}.parts")
    for index, part in enumerate(parts):
        if not isinstance(part, dict):
            param = f"{where}.parts[{index}]"
            raise BadRequestError(f"'{param}' must be an object", param=param)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt of a Gemini body as the quota estimates a chat body's: its text at
    ``CHARS_PER_TOKEN`` characters a token, and each content's overhead. A countTokens
    body's ``generateContentRequest`` is read as the request it wraps.

    A text file sent inline (``inlineData`` of a text media type, ``text_inline_data``)
    counts as its text, which Google bills as prompt tokens. Other inline bytes and files
    (``inlineData``, ``fileData``) count nothing, as images count nothing elsewhere
    (``quota.estimate``): their size is not their token count. The structured output's
    schema (``generationConfig.responseSchema`` or ``responseJsonSchema``) counts as its
    JSON, as tool definitions do: Google counts it toward the prompt. Context
    Google adds from a cache (``cachedContent``) is not in the body: the estimate is low
    for such a request, and the settlement, from Google's count, exact."""
    request = _field(body, REQUEST)
    if _field(body, CONTENTS) is None and isinstance(request, dict):
        body = request
    prompt = _content_chars(_field(body, SYSTEM)) // CHARS_PER_TOKEN
    contents = _field(body, CONTENTS)
    if isinstance(contents, list):
        for content in contents:
            if isinstance(content, dict):
                prompt += _content_chars(content) // CHARS_PER_TOKEN + PER_MESSAGE_OVERHEAD
    tools = _field(body, _TOOLS)
    if isinstance(tools, list) and tools:
        # The function declarations (names, descriptions, schemas) go into the prompt.
        prompt += json_chars(tools) // CHARS_PER_TOKEN
    config = _field(body, GENERATION_CONFIG)
    if isinstance(config, dict):
        for names in RESPONSE_SCHEMAS:
            prompt += json_chars(_field(config, names)) // CHARS_PER_TOKEN
    return prompt


def text_inline_data(part: dict[str, Any]) -> dict[str, Any] | None:
    """The part's ``inlineData`` when it holds a text file (a text media type, its
    ``data`` a string of base64), else None."""
    inline = _field(part, INLINE_DATA)
    if not isinstance(inline, dict) or not isinstance(inline.get("data"), str):
        return None
    # Gemini reads text/* and the document types its docs list beside them as text;
    # images, audio, video and PDFs are not text.
    return inline if is_text_media_type(_field(inline, _MIME_TYPE)) else None


def _content_chars(content: Any) -> int:
    """The text of a content's parts (a system instruction is a content too)."""
    parts = _field(content, _PARTS) if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return 0
    return sum(_part_chars(part) for part in parts if isinstance(part, dict))


def _part_chars(part: dict[str, Any]) -> int:
    """A part's text: text itself, a function call's name and arguments, what a function
    returned (and its name), code and what running it printed, a text file sent inline."""
    text = part.get("text")
    if isinstance(text, str):
        return len(text)
    call = _field(part, FUNCTION_CALL)
    if isinstance(call, dict):
        return string_chars(call.get("name")) + json_chars(call.get("args"))
    response = _field(part, FUNCTION_RESPONSE)
    if isinstance(response, dict):
        return string_chars(response.get("name")) + json_chars(response.get("response"))
    code = _field(part, CODE)
    if isinstance(code, dict):
        return string_chars(code.get("code"))
    result = _field(part, CODE_RESULT)
    if isinstance(result, dict):
        return string_chars(result.get("output"))
    inline = text_inline_data(part)
    if inline is not None:
        # The file's length from its base64, not decoded.
        return encoded_chars(inline["data"])
    return 0


def completion_allowance(body: dict[str, Any], default_max_tokens: int) -> int:
    """The most the answer may take: ``maxOutputTokens`` (else the default) for each of
    the ``candidateCount`` candidates Gemini generates."""
    config = _field(body, GENERATION_CONFIG)
    most = _positive(_field(config, _MAX_OUTPUT)) if isinstance(config, dict) else None
    return (most or default_max_tokens) * choices(body)


def choices(body: dict[str, Any]) -> int:
    """How many candidates Gemini generates (``candidateCount``, else one): a hard cap
    shares its room among them."""
    config = _field(body, GENERATION_CONFIG)
    count = _positive(_field(config, _CANDIDATES)) if isinstance(config, dict) else None
    return count or 1


def cap_completion(body: dict[str, Any], most_per_candidate: int) -> bool:
    """Lower ``maxOutputTokens`` to ``most_per_candidate`` (setting it when absent), in
    the spelling the body uses; whether the body changed.

    Gemini counts its thinking in ``maxOutputTokens``, which therefore bounds it: a
    ``thinkingBudget`` stays as the client set it. Lowered, it could fall below the
    least the model takes (128 for Gemini 2.5 Pro, 512 for Flash-Lite), which Google
    refuses with a 400."""
    key, config = _named(body, GENERATION_CONFIG)
    if not isinstance(config, dict):
        config = body[key] = {}
    # A new field takes the spelling of the object it goes in.
    spelling = _MAX_OUTPUT[0] if key == GENERATION_CONFIG[0] else _MAX_OUTPUT[1]
    name, value = _named(config, _MAX_OUTPUT, default=spelling)
    current = _positive(value)
    if current is not None and current <= most_per_candidate:
        return False
    config[name] = most_per_candidate
    return True


def _positive(value: Any) -> int | None:
    """An integer of at least 1 (JSON's ``true`` is none), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _named(
    container: dict[str, Any], names: tuple[str, ...], default: str | None = None
) -> tuple[str, Any]:
    """The first of ``names`` the container gives a value (not null), and that value; else
    ``default`` (the first name when none is given) and None."""
    for name in names:
        value = container.get(name)
        if value is not None:
            return name, value
    return default or names[0], None


def _field(container: dict[str, Any], names: tuple[str, ...]) -> Any:
    """The value of the first of ``names`` the container gives one."""
    return _named(container, names)[1]

"""OpenAI chat-completions client to Anthropic's Messages API; this module owns the requests.

The whole translator is imported from here. Answers (whole or streamed) and errors are
translated in ``openai_anthropic_stream`` and re-exported below.

``translate_request``: system and developer messages become the top-level ``system`` prompt
wherever they stand in the conversation, since Anthropic has no system role; tool results
become ``tool_result`` blocks in a user turn; consecutive turns of one role are merged
(Anthropic would merge them too, and its models are trained on alternating turns). A
request with tool calls in its history but no ``tools`` (an agent's closing summary)
declares the tools the history called, with ``tool_choice: none``: Anthropic refuses tool
blocks in a request that defines no tools, and the client asked for no tool call.

What OpenAI accepts and Anthropic refuses with a 400 is made acceptable when nothing is lost:
empty and whitespace-only text is left out, and so is a turn left with nothing in it (an
assistant that answered nothing after a tool result, a blank line from a chat UI); a final
assistant turn (a prefill) loses its trailing whitespace. A conversation with no user or
assistant content left is refused by the gateway, naming ``messages``. So is one whose last
user message says nothing after the assistant's (naming that message): left out, it would
turn the assistant's message into a prefill, continued rather than answered.

``response_format`` of type ``json_schema`` becomes Anthropic's structured output
(``output_config.format``, no beta header), which constrains the answer to the schema
(its ``name`` and ``description`` have no place there and are left out); a model without
structured outputs answers Anthropic's 400, which the client gets. ``json_object`` is
refused with a 400 naming ``response_format`` that says to send ``json_schema``, as for
Bedrock (``response_formats.schema_to_hold``): Anthropic has no "any JSON" mode, and
sent without one the answer was as often a fenced or introduced JSON the client failed to
parse. An unknown type or a malformed ``json_schema`` is refused with a 400 naming the
field, as OpenAI refuses it, rather than dropped.

An image sent as a data URL goes with the media type its bytes are (``data_urls``), since
Anthropic refuses a label the bytes do not match, and ``image/jpg``, both of which OpenAI
takes.

What cannot be carried over is refused with a 400 naming the field, not guessed at:

- ``n`` > 1: Anthropic returns one answer per request.
- ``logprobs: true`` or ``top_logprobs`` above 0: Claude returns no log probabilities (an
  answer would carry ``logprobs: null`` where the client asked for them).
- content parts other than text, images and PDFs (audio; a file by ``file_id``, which is
  OpenAI's to read; a file that is no PDF, which OpenAI's chat API refuses too), tools
  other than functions. A PDF (a ``file`` part's base64 ``file_data``) goes as Anthropic's
  ``document`` block (``pdf_parts``).
- an image by http(s) URL where the API takes images as bytes only (Claude on Vertex AI,
  ``image_urls=False``): the gateway does not fetch URLs on a client's behalf.
- a stop sequence of whitespace alone (``"\\n"``), which Anthropic refuses: the answer
  cannot end where the client asked. An empty one (``""``) is left out instead: it marks
  no place to stop, and Anthropic refuses it too, so the answer is the one the client
  would get anywhere that takes it (``openai_bedrock`` leaves it out the same way).
- the deprecated ``functions`` and ``function_call``: left out, Claude would answer in text
  a client waiting for a function call (and billed for it); ``tools`` say the same thing.

Fields beyond the conversation (``openai_chat_extras``): audio output (``modalities``,
``audio``) is refused with a 400 naming the field; ``web_search_options`` is Anthropic's
web search tool (refused, naming it, where ``tool_choice: none`` or a function named
``web_search`` would leave Claude unable to search); vLLM's ``documents`` are plain-text
``document`` blocks opening the first user turn; ``prediction``, ``chat_template_kwargs``
and a message's ``name`` are hints, left out. ``check_before_quota`` gives those 400s
before the quota.

Sampling: OpenAI's temperature (0..2) is clamped to Anthropic's 0..1. ``top_p`` is sent only
without a temperature, because recent Claude models refuse the two together and many OpenAI
clients send both. API version 2026-10-21 removed both (Anthropic refuses them there even at
their defaults), so with that version or a later one neither is sent. Other OpenAI-only
fields (seed, penalties, stream_options...) are dropped.

End user: OpenAI's ``user`` (or ``safety_identifier``) goes as ``metadata.user_id`` where
Anthropic takes it; one it refuses (an e-mail address, past 256 characters) is left out
rather than failing the request (``claude_end_user``).

Geography: the gateway's ``inference_geo`` extension of the chat body (``"us"``: US-only
inference) goes to Anthropic's API as its own ``inference_geo``; Claude on Vertex AI
takes none, and a geography other than ``global`` is refused there (``claude_geography``).

Reasoning: ``reasoning_effort`` is OpenAI's only switch for thinking, so it turns on
Claude's thinking in the one mode the model takes (``takes_adaptive_thinking``, by the
upstream model's id); ``none`` and ``minimal`` ask for no thinking, any other value than
``low``, ``medium``, ``high`` or ``xhigh`` is a 400 naming it. Thinking counts against
``max_tokens``. The same decisions serve Claude on Bedrock's Converse API
(``openai_bedrock``), which imports them. ``check_before_quota`` raises the 400s below
before the quota counts the request (``backends.check_pair``).

- Adaptive thinking (Claude Opus 4.6, Sonnet 4.6 and every later model, one the gateway
  does not know included: Opus 4.7 and later refuse a fixed budget, and the 4.6 models
  deprecate it): ``{"type": "adaptive"}`` with ``output_config.effort`` the level, beside
  the ``output_config.format`` structured output may set. Claude decides how much to
  think, so no bound is too small: one the body names is kept as it is. OpenAI's
  ``xhigh`` is Anthropic's ``xhigh`` (Opus 4.7 and later); the models that came before
  that level (Opus 4.6, Sonnet 4.6, Mythos Preview) get ``max``, the one level they have
  above ``high`` (``adaptive_effort``). Opus 4.7, Mythos Preview and later would answer
  with an empty thinking block (their ``thinking.display`` defaults to ``omitted``): they
  are asked for the summarized thought (``adaptive_thinking``).
- Extended thinking with a fixed budget (Claude 3.7 Sonnet, Opus 4 and 4.1, Sonnet 4, the
  4.5 models, which predate adaptive thinking): ``{"type": "enabled", "budget_tokens":
  N}`` with N from ``THINKING_BUDGETS`` (low 1,024, medium 2,048, high 4,096, xhigh
  8,192), at least
  1,024 and below ``max_tokens``: a bound the body names keeps, with the budget lowered
  below it (OpenAI's bound covers reasoning too), and one of 1,024 or less, no room to
  think at all, is a 400 naming that field.

Either way, a request that names no ``max_completion_tokens`` / ``max_tokens`` gets the
default plus the level's budget, so the answer keeps the room it has without thinking.
What Anthropic refuses beside thinking, adaptive or not, is refused with a 400 naming the
OpenAI field, as OpenAI refuses it for its own reasoning models: a ``temperature`` other
than 1, a ``top_p`` below 0.95, and a ``tool_choice`` that forces a call. Thinking is not
turned on when the conversation's last assistant turn is still open
inside a tool loop Anthropic wants that turn to start with the
thinking block it answered with, signature included, which an OpenAI client never had to
send back (``turn_left_open``); a final assistant turn (a prefill) is the same case. The
quota stage reads
the same numbers (``thinking_budget_for``, ``named_max_tokens``,
``takes_adaptive_thinking``).
"""

from __future__ import annotations

import re
from typing import Any

from extproc.errors import BadRequestError
from extproc.translators.cache_breakpoints import (
    MARKER,
    cache_control,
    keep_last_breakpoints,
    mark,
    mark_last_turn,
)
from extproc.translators.claude_end_user import anthropic_user_id
from extproc.translators.claude_geography import FIELD as GEOGRAPHY_FIELD
from extproc.translators.claude_geography import asked_inference_geo, refuse_inference_geo
from extproc.translators.claude_thinking import (
    THINKING_BUDGETS,
    adaptive_effort,
    adaptive_thinking,
    fit_thinking,
    forced_call_with_thinking,
    reasoning_effort,
    refuse_sampling_with_thinking,
    takes_adaptive_thinking,
    turn_left_open,
)
from extproc.translators.data_urls import image_format
from extproc.translators.openai_anthropic_stream import (
    CompletionTranslator,
    StreamTranslator,
    translate_error,
)
from extproc.translators.openai_chat_extras import (
    WEB_SEARCH_NAME,
    anthropic_document_blocks,
    before_the_conversation,
    chat_documents,
    refuse_audio_output,
    web_search_tool,
)
from extproc.translators.pdf_parts import anthropic_document, read_pdf_part
from extproc.translators.response_formats import schema_to_hold
from extproc.translators.tool_arguments import tool_input
from extproc.translators.tool_ids import provider_tool_call_id

__all__ = [
    "CLAUDE",
    "DEFAULT_MAX_TOKENS",
    "CompletionTranslator",
    "StreamTranslator",
    "check_before_quota",
    "named_max_tokens",
    "thinking_budget_for",
    "translate_error",
    "translate_request",
]

DEFAULT_MAX_TOKENS = 4096
# What the client is told cannot do what it asked (response_formats.schema_to_hold).
CLAUDE = "Claude"
# The anthropic-version that removed temperature, top_p and top_k (ISO dates compare as text).
SAMPLING_REMOVED_IN = "2026-10-21"

# A tuple, not a set: a malformed role (a list, say) must not fail to hash.
_SYSTEM_ROLES = ("system", "developer")
_TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}
# A base64 data URL; parameters such as `;charset=` may stand before `;base64`. Each
# parameter is read from its `;`: as `[^,]*` after the media type, a URL with no `;` or
# `,` (a client's image of "data:" and a megabyte) was read again for every way to split
# it between the two, time in the square of the image's size.
_DATA_URL = re.compile(r"data:(?P<media>[^;,]+)(?:;[^;,]*)*;base64,(?P<data>.*)", re.DOTALL)


def translate_request(
    body: dict[str, Any],
    upstream_model: str,
    *,
    stream: bool,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    anthropic_version: str | None = None,
    image_urls: bool = True,
    inference_geo: bool = True,
) -> dict[str, Any]:
    """The Anthropic request for an OpenAI one; BadRequestError for what cannot be sent.

    ``anthropic_version`` is the API version the request goes out with; it decides whether
    sampling parameters can be sent (None: an older version, which takes them).
    ``image_urls``: whether the API takes an image by URL (Vertex AI's Claude does not).
    ``inference_geo``: whether it takes the gateway's ``inference_geo`` extension
    (Anthropic's API does, Vertex AI's Claude does not: ``claude_geography``).
    """
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequestError("this model returns one choice per request; 'n' must be 1", param="n")
    _refuse_legacy_functions(body)
    _refuse_logprobs(body)
    refuse_audio_output(body, CLAUDE)
    effort = reasoning_effort(body)
    output_config = _output_config(body.get("response_format"))
    search = web_search_tool(body)
    system, messages = _messages(body.get("messages"), image_urls)
    # vLLM's RAG documents, read before the conversation (openai_chat_extras).
    before_the_conversation(anthropic_document_blocks(chat_documents(body)), messages)
    named = named_max_tokens(body)
    max_tokens = named[1] if named is not None else default_max_tokens
    thinking: dict[str, Any] | None = None
    if effort is not None and not turn_left_open(messages):
        if takes_adaptive_thinking(upstream_model):
            # Claude sizes its thinking to the effort and to the bound: any bound is kept.
            thinking = adaptive_thinking(upstream_model)
            level = adaptive_effort(effort, upstream_model)
            output_config = {**(output_config or {}), "effort": level}
            if named is None:
                max_tokens = default_max_tokens + THINKING_BUDGETS[effort]
        else:
            budget, max_tokens = fit_thinking(THINKING_BUDGETS[effort], named, default_max_tokens)
            thinking = {"type": "enabled", "budget_tokens": budget}
    request: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": max_tokens,
        "messages": messages,
    }
    if system:
        request["system"] = system
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequestError("'stop' must be a string or an array of strings", param="stop")
        if any(s and s.isspace() for s in stop):
            raise BadRequestError(
                "Claude takes no stop sequence of whitespace alone (Anthropic refuses it): "
                "leave it out of 'stop'",
                param="stop",
            )
        # An empty one marks no place to stop (and Anthropic refuses it): left out.
        stop = [s for s in stop if s]
        if stop:
            request["stop_sequences"] = stop
    if output_config is not None:
        request["output_config"] = output_config
    temperature = _number(body, "temperature")
    top_p = _number(body, "top_p")
    sampling = anthropic_version is None or anthropic_version < SAMPLING_REMOVED_IN
    if sampling and temperature is not None:
        request["temperature"] = min(max(temperature, 0.0), 1.0)
    elif sampling and top_p is not None:
        request["top_p"] = top_p
    if thinking is not None:
        refuse_sampling_with_thinking(request.get("temperature"), request.get("top_p"))
        request["thinking"] = thinking
    tools = body.get("tools")
    if tools:
        request["tools"] = _tools(tools)
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            if thinking is not None and choice["type"] in ("any", "tool"):
                raise forced_call_with_thinking()
            request["tool_choice"] = choice
    else:
        called = _tools_the_history_called(messages)
        if called:
            request["tools"] = called
            request["tool_choice"] = {"type": "none"}
    if search is not None:
        _add_web_search(request, search)
    # OpenAI's end user (`user`, `safety_identifier`), where Anthropic takes it.
    user = anthropic_user_id(body)
    if user is not None:
        request["metadata"] = {"user_id": user}
    if inference_geo:
        geography = asked_inference_geo(body)
        if geography is not None:
            request[GEOGRAPHY_FIELD] = geography
    else:
        refuse_inference_geo(body, "Vertex AI")
    # The body's own marker is on the last block; Claude refuses a fifth breakpoint: the
    # last four are kept (cache_breakpoints).
    mark_last_turn(messages, body)
    keep_last_breakpoints(request)
    request["stream"] = stream
    return request


def _add_web_search(request: dict[str, Any], search: dict[str, Any]) -> None:
    """Declare Anthropic's web search tool beside the request's tools.

    Refused (400 naming ``web_search_options``) where Claude could not search as asked: a
    function of the search tool's name (Anthropic refuses two tools of one name), and a
    request whose tools go with ``tool_choice: none`` (the client's, or the one a history
    of tool calls without ``tools`` is sent with), which Anthropic applies to every tool,
    web search included: the answer would come from the model's memory, not the web."""
    tools: list[dict[str, Any]] = request.setdefault("tools", [])
    if any(tool.get("name") == WEB_SEARCH_NAME for tool in tools):
        raise BadRequestError(
            f"a tool named '{WEB_SEARCH_NAME}' clashes with Claude's web search tool, which "
            "web_search_options turns on: rename the function",
            param="web_search_options",
        )
    if request.get("tool_choice", {}).get("type") == "none":
        raise BadRequestError(
            "Claude cannot search the web in a request whose tools are off (tool_choice "
            "'none', or tool calls in the history without 'tools'): send the tools with "
            "tool_choice 'auto', or leave 'web_search_options' out",
            param="web_search_options",
        )
    tools.append(search)


def thinking_budget_for(body: dict[str, Any]) -> int | None:
    """The thinking budget ``translate_request`` asks for this OpenAI chat body, before it
    is fitted below a ``max_tokens`` the body names: None when it asks for no thinking or
    the conversation's last assistant turn is still open (``turn_left_open``).

    For the quota, which reserves the budget on top of the default allowance and leaves
    a hard-capped request room for the least budget (adaptive thinking names no budget,
    but a body that names no bound gets the same room for it); it raises the 400s the
    translation would raise for the same body."""
    effort = reasoning_effort(body)
    if effort is None:
        return None
    _, turns = _messages(body.get("messages"), True)
    return None if turn_left_open(turns) else THINKING_BUDGETS[effort]


# The fields beyond the conversation whose refusals ``check_before_quota`` gives
# (openai_chat_extras).
_EXTRAS = ("modalities", "audio", "web_search_options", "documents", "chat_template_kwargs")


def check_before_quota(
    body: dict[str, Any],
    upstream_model: str,
    *,
    anthropic_version: str | None = None,
    image_urls: bool = True,
) -> None:
    """Refuse, before the quota counts the request, what ``translate_request`` would
    refuse of a body whose ``reasoning_effort`` asks Claude to think (the level, and what
    Anthropic refuses beside thinking in the mode the model takes: a ``temperature`` or
    ``top_p`` the API version sends, a forced ``tool_choice``, a bound with no room for
    the least budget) or that has fields beyond the conversation (``openai_chat_extras``:
    audio output, a malformed ``web_search_options`` or one Claude could not search
    with, malformed documents). Translated once and thrown away, so the decision is the
    translation's (the turn left open, the model, the version); a body with neither is
    not read further. The options are ``translate_request``'s."""
    if reasoning_effort(body) is None and not any(body.get(f) is not None for f in _EXTRAS):
        return
    translate_request(
        body,
        upstream_model,
        stream=False,
        anthropic_version=anthropic_version,
        image_urls=image_urls,
    )


def _refuse_legacy_functions(body: dict[str, Any]) -> None:
    """OpenAI's deprecated ``functions`` API has no Anthropic counterpart the answer could
    come back in (``function_call``, not ``tool_calls``); dropping it would leave the model
    without the functions, so the client is told to use tools."""
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise BadRequestError(
            "functions and function_call are not supported: use tools and tool_choice",
            param="functions",
        )


def _refuse_logprobs(body: dict[str, Any]) -> None:
    """Claude returns no token log probabilities: a client that asks for them (``logprobs:
    true``, ``top_logprobs`` above 0) is told so, as OpenAI tells it for its own models
    without them, rather than answered with the ``logprobs: null`` it did not ask for."""
    for field in ("logprobs", "top_logprobs"):
        value = body.get(field)
        if value is True or (isinstance(value, int) and not isinstance(value, bool) and value):
            raise BadRequestError(
                f"Claude returns no log probabilities: leave '{field}' out", param=field
            )


def _messages(
    value: Any, image_urls: bool
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``system`` prompt (one string, or text blocks when the client marked a
    prompt-cache breakpoint in it) and the turns of an OpenAI conversation."""
    if not isinstance(value, list):
        raise BadRequestError("'messages' must be an array", param="messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    # A user message left out since the last message with content: the client's last word,
    # if the conversation would end with the assistant (_silent_last_user).
    silent_user: str | None = None
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequestError("each message must be an object", param=where)
        role = message.get("role")
        marker = cache_control(message.get(MARKER), where)
        if role in _SYSTEM_ROLES:
            # Marked on its last block: a message's breakpoint caches it whole.
            blocks = _marked_text_blocks(message.get("content"), f"{where}.content")
            mark(blocks, marker)
            system.extend(blocks)
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), f"{where}.content", image_urls)
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            blocks = [_tool_result(message, where)]
        else:
            raise BadRequestError(
                f"messages with role {role!r} cannot be sent to this model", param=f"{where}.role"
            )
        mark(blocks, marker)
        if not blocks:
            # Nothing said (empty or blank text): Anthropic refuses an empty turn.
            if role == "user":
                silent_user = where
            continue
        silent_user = None
        anthropic_role = "assistant" if role == "assistant" else "user"
        if turns and turns[-1]["role"] == anthropic_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    if not turns:
        raise BadRequestError(
            "at least one user or assistant message with content is required",
            param="messages",
        )
    if silent_user is not None and turns[-1]["role"] == "assistant":
        raise _silent_last_user(silent_user)
    for turn in turns:
        if turn["role"] == "user":
            # Anthropic wants a turn's tool results before its other blocks; the sort is stable.
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    _trim_prefill(turns)
    if any(MARKER in block for block in system):
        # Only blocks carry a breakpoint; without one the prompt stays the one string
        # it always was (a cache written before keeps its prefix).
        return system, turns
    return "\n\n".join(block["text"] for block in system), turns


def _silent_last_user(where: str) -> BadRequestError:
    """The refusal of a conversation whose last user message says nothing after the
    assistant's.

    Left out, it would leave the assistant's message last, which Anthropic reads as a
    prefill to continue ("Hello! How can ..."), not as a turn to answer: the client would
    get a continuation it did not ask for (and Claude 4.6 and later refuse a prefill with
    a 400). Nothing stands in for the user's text without changing what was asked.
    """
    return BadRequestError(
        f"{where}.content is empty: Anthropic needs text in the last user message. Without "
        "it the conversation ends with the assistant's message, which the model would "
        "continue instead of answering",
        param=f"{where}.content",
    )


def _trim_prefill(turns: list[dict[str, Any]]) -> None:
    """Anthropic refuses a final assistant turn (a prefill) that ends in whitespace; the
    whitespace is dropped (the model writes its own)."""
    last = turns[-1]
    block = last["content"][-1]
    if last["role"] == "assistant" and block["type"] == "text":
        # Not blank: blank text was left out, so something is left.
        block["text"] = block["text"].rstrip()


def _texts(content: Any, where: str) -> list[str]:
    """The text of a string or of an array of text parts (an assistant's refusals count)."""
    if isinstance(content, str):
        return [content]
    if content is None:
        return []
    if not isinstance(content, list):
        raise BadRequestError("content must be a string or an array of parts", param=where)
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        text = part.get("refusal" if kind == "refusal" else "text") if kind else None
        if kind not in ("text", "refusal") or not isinstance(text, str):
            raise BadRequestError("only text parts are accepted here", param=f"{where}[{j}]")
        texts.append(text)
    return texts


def _text_blocks(texts: list[str]) -> list[dict[str, Any]]:
    # Anthropic refuses empty and whitespace-only text blocks, and they add nothing.
    return [{"type": "text", "text": text} for text in texts if text.strip()]


def _marked_text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """``_text_blocks`` of a string or of text parts, each part's prompt-cache marker
    on its block (``cache_breakpoints.mark``)."""
    texts = _texts(content, where)
    if not isinstance(content, list):
        return _text_blocks(texts)
    blocks: list[dict[str, Any]] = []
    for j, (text, part) in enumerate(zip(texts, content, strict=True)):
        blocks.extend(_text_blocks([text]))
        mark(blocks, cache_control(part.get(MARKER), f"{where}[{j}]"))
    return blocks


def _user_blocks(content: Any, where: str, image_urls: bool) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text_blocks(_texts(content, where))
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}[{j}].image_url", image_urls))
        elif kind == "file":
            blocks.append(anthropic_document(read_pdf_part(part, f"{where}[{j}]", CLAUDE)))
        elif kind == "text" and isinstance(part.get("text"), str):
            blocks.extend(_text_blocks([part["text"]]))
        else:
            raise BadRequestError(
                f"content parts of type {kind!r} cannot be sent to this model",
                param=f"{where}[{j}]",
            )
        mark(blocks, cache_control(part.get(MARKER), f"{where}[{j}]"))
    return blocks


def _image(value: Any, where: str, image_urls: bool) -> dict[str, Any]:
    url = value.get("url") if isinstance(value, dict) else value
    if isinstance(url, str):
        if url[:8].lower().startswith(("http://", "https://")):
            if not image_urls:
                raise BadRequestError(
                    "Claude on Vertex AI takes images as bytes, not URLs: send the image as "
                    "a data URL (data:image/png;base64,...)",
                    param=f"{where}.url",
                )
            return {"type": "image", "source": {"type": "url", "url": url}}
        match = _DATA_URL.fullmatch(url)
        if match:
            found = image_format(match["media"], match["data"])
            # Bytes of no format Anthropic takes keep their label: its 400 names it.
            media = f"image/{found}" if found is not None else match["media"]
            source = {"type": "base64", "media_type": media, "data": match["data"]}
            return {"type": "image", "source": source}
    raise BadRequestError(
        "an image must be an http(s) URL or a base64 data URL", param=f"{where}.url"
    )


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = _marked_text_blocks(message.get("content"), f"{where}.content")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadRequestError("'tool_calls' must be an array", param=f"{where}.tool_calls")
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequestError("a tool call needs a function with a name", param=at)
        if not isinstance(call.get("id"), str):
            raise BadRequestError("a tool call needs an id", param=f"{at}.id")
        parsed = tool_input(function.get("arguments"))
        if parsed is None:
            raise BadRequestError(
                "tool call arguments must be a string (the JSON text of the call's input)",
                param=f"{at}.function.arguments",
            )
        blocks.append(
            {
                "type": "tool_use",
                # Anthropic refuses another provider's ids (``functions.get_weather:0``).
                "id": provider_tool_call_id(call["id"]),
                "name": function["name"],
                "input": parsed,
            }
        )
    return blocks


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequestError(
            "a tool message needs the 'tool_call_id' it answers", param=f"{where}.tool_call_id"
        )
    content = message.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": provider_tool_call_id(call_id)}
    if isinstance(content, str):
        if content.strip():
            result["content"] = content
    else:
        result["content"] = _text_blocks(_texts(content, f"{where}.content"))
        # A part's marker goes on the result, which holds it: the result is one block
        # of the prompt, cached whole (a message's marker goes there too, in _messages).
        for j, part in enumerate(content or ()):
            mark([result], cache_control(part.get(MARKER), f"{where}.content[{j}]"))
    return result


def _output_config(value: Any) -> dict[str, Any] | None:
    """Anthropic's structured output for OpenAI's ``json_schema`` response format; None
    for ``text`` and none. ``json_object`` (Anthropic has no such mode) and a malformed
    one are refused (``response_formats.schema_to_hold``)."""
    spec = schema_to_hold(value, CLAUDE)
    if spec is None:
        return None
    # OpenAI's `strict` has no counterpart: Anthropic always holds the answer to the
    # schema. Its format takes no `name` or `description`: they are left out.
    return {"format": {"type": "json_schema", "schema": spec.schema}}


def named_max_tokens(body: dict[str, Any]) -> tuple[str, int] | None:
    """The completion bound the body names, with its field; None when it names none."""
    # max_completion_tokens is the newer name; OpenAI clients may send it beside max_tokens.
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequestError(f"'{field}' must be a positive integer", param=field)
        return field, value
    return None


def _number(body: dict[str, Any], field: str) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BadRequestError(f"'{field}' must be a number", param=field)
    return value


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise BadRequestError("'tools' must be an array", param="tools")
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(value):
        # The tool's own marker (LiteLLM's place for it): the tools up to it are cached.
        marker = cache_control(tool.get(MARKER), f"tools[{i}]") if isinstance(tool, dict) else None
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(function, dict)
            or tool.get("type") != "function"
            or not isinstance(function.get("name"), str)
        ):
            raise BadRequestError(
                "only function tools with a name can be sent to this model", param=f"tools[{i}]"
            )
        entry: dict[str, Any] = {"name": function["name"]}
        if isinstance(function.get("description"), str):
            entry["description"] = function["description"]
        entry["input_schema"] = function.get("parameters") or {"type": "object"}
        # `strict` is not sent: Anthropic refuses strict tools on models without structured
        # outputs, and OpenAI agent frameworks mark every tool strict (docs/providers.md).
        tools.append(entry)
        mark(tools, marker)
    return tools


def _tools_the_history_called(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools a request without ``tools`` must declare for its history's tool calls.

    Anthropic refuses ``tool_use`` and ``tool_result`` blocks in a request that defines no
    tools ("Requests which include `tool_use` or `tool_result` blocks must define tools."),
    and OpenAI takes them: an agent's last turn (a summary, a compaction) sends its history
    without tools. Each tool the history called is declared (its schema is not known: any
    object), and the request forbids calling them (``tool_choice: none``), so Claude reads
    the history as it was and answers in text, as the client asked.
    """
    names = dict.fromkeys(
        block["name"] for turn in turns for block in turn["content"] if block["type"] == "tool_use"
    )
    return [{"name": name, "input_schema": {"type": "object"}} for name in names]


def _tool_choice(value: Any, parallel: Any) -> dict[str, Any] | None:
    choice: dict[str, Any] | None = None
    if isinstance(value, str) and value in _TOOL_CHOICES:
        choice = {"type": _TOOL_CHOICES[value]}
    elif isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise BadRequestError("tool_choice names no function", param="tool_choice")
        choice = {"type": "tool", "name": name}
    elif value is not None:
        raise BadRequestError(
            "tool_choice must be 'auto', 'required', 'none' or a function", param="tool_choice"
        )
    # OpenAI's switch is a top-level field; Anthropic's lives on tool_choice.
    if parallel is False:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    return choice

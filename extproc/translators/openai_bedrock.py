"""OpenAI chat-completions client to AWS Bedrock's Converse API: requests, answers and errors.

Requests (``translate_request``): system and developer messages become the top-level
``system`` blocks wherever they stand, since Converse has no system role (for the models that
take no ``system`` at all, Titan and Mistral's 7B and 8x7B Instruct, their text opens the first
user turn instead: see ``model_takes_system``); tool results
become ``toolResult`` blocks in a user turn; consecutive turns of one role are merged
because Converse requires user and assistant to alternate; empty and whitespace-only text
is left out, since Converse refuses a blank text block, and so is a message left with
nothing in it (a conversation with nothing at all is refused); a final assistant turn (a
prefill) loses its trailing whitespace, which Claude on Converse refuses. An empty user
message is refused instead (400 naming it) where leaving it out would change the
conversation: first, before the assistant's message (Converse refuses a conversation that
starts with the assistant), or last, after it (the assistant's message would become a
prefill, continued rather than answered). The model is not in the body: it is part of the
path (``request_path``), percent-encoded as botocore does.

What cannot be carried over is refused, not guessed at:

- ``n`` > 1: Converse returns one answer per request.
- images by http(s) URL: Converse takes the image's bytes only, and the gateway does not
  fetch URLs on a client's behalf. Data URLs of png, jpeg, gif and webp images are sent, in
  the format their bytes are (``data_urls``: Bedrock refuses a format the bytes do not
  match, which OpenAI takes). A PDF (a ``file`` part's base64 ``file_data``) is a
  Converse ``document`` block, named from its file name, apart from the request's other
  documents (``pdf_parts``); a file by ``file_id`` or that is no PDF is refused.
- ``response_format`` of type ``json_object``: Converse has no mode for any JSON object
  (an unknown type or a malformed ``json_schema`` is refused too, as OpenAI refuses it:
  ``response_formats``); the deprecated ``functions``, content parts other than text and
  images, tools other than functions.
- ``logprobs: true`` or ``top_logprobs`` above 0: Converse returns no log probabilities.
- a stop sequence of whitespace alone for Claude, which refuses it (``_stop_sequences``;
  an empty one is left out, for every model).
- a conversation that opens with the assistant's message, which Converse refuses
  (``_check_conversation_start``).
- the gateway's ``inference_geo`` extension asking for a geography other than ``global``:
  Bedrock runs a model in its inference profile's region (``claude_geography``).
- audio output (``modalities``, ``audio``) and ``web_search_options`` (Claude's web search
  is Anthropic's server tool, which Bedrock does not run): ``openai_chat_extras``, which
  also makes vLLM's ``documents`` Converse ``txt`` documents opening the first user turn.

``tool_choice``: ``required`` is Converse's ``any``, a named function its ``tool``. ``auto``
(and no choice) sends no ``toolChoice``, which means auto, because only some Bedrock models
accept the field. Converse has no ``none``: the tools are left out. A request that sends no
tools (none given, or ``none``) but whose history holds tool calls and results (an agent's
final summary turn) gets that history as text (``_tool_history_as_text``): Converse refuses
``toolUse`` and ``toolResult`` blocks without a ``toolConfig``, and declaring tools for them
would let the model call one the client did not offer. ``parallel_tool_calls: false``
reaches Claude as Anthropic's ``disable_parallel_tool_use`` (``_one_call_at_a_time``);
other models have no such switch, and it is dropped. Sent as blocks, a tool call id that
Converse would refuse (another provider's ``functions.get_weather:0``, one past 64
characters) is rewritten the same way in the call and in its result
(``tool_ids.provider_tool_call_id``); ids that fit are sent as they are. An empty tool
result is one empty text block, which Converse takes inside a ``toolResult`` (some models
refuse a ``toolResult`` with no content at all).
``response_format`` of type ``json_schema`` is Bedrock's structured output
(``outputConfig.textFormat``, ``_output_config``): the schema, as a JSON string, with the
``name`` and ``description`` sent beside it; Bedrock constrains the answer to it, which
comes back as the answer's text, whole or streamed. A model without structured outputs,
or a schema beyond what Bedrock's decoding enforces, is Bedrock's ValidationException,
the client's 400 with Bedrock's words.
``service_tier``: the tiers Bedrock has are asked of Converse as ``serviceTier``
(``converse_service_tier``): ``flex``, ``priority``, ``default`` as they are, OpenAI's
``fast`` as ``priority`` (what OpenAI serves it as), and Bedrock's own ``reserved``.
``auto`` (and none) sends no tier: Bedrock chooses, which is its standard tier. Another
value (OpenAI's ``scale``) is refused with a 400 naming ``service_tier``: served at a tier
the client did not ask for, the request would be billed at a price it did not choose.
Other OpenAI-only fields (seed, penalties, stream_options...) are dropped.

``reasoning_effort`` turns on Claude's thinking as ``openai_anthropic`` does, with its
decisions (imported, not copied): Converse passes Anthropic's fields on to Claude in
``additionalModelRequestFields``, so a Claude that thinks adaptively
(``takes_adaptive_thinking``: Opus 4.6, Sonnet 4.6 and later) gets ``thinking: {"type":
"adaptive"}`` with ``output_config.effort``, an older one ``thinking: {"type": "enabled",
"budget_tokens": N}`` (``THINKING_BUDGETS``), each refusing the other mode with a 400.
``maxTokens`` is raised by the level's budget when the body names no bound (from the
default the caller gives, else ``openai_anthropic.DEFAULT_MAX_TOKENS``, since a budget
needs a ``maxTokens`` above it); a bound the body names is kept, the budget fitted below
it. The 400s are Anthropic's translation's: an unknown level, a bound with no room for
the least budget, a ``temperature`` other than 1, a ``top_p`` below 0.95, a forced tool
call; and no thinking while the last assistant turn is open (a tool loop, a prefill),
which Claude would want to start with the thinking block, signature included, that an
OpenAI client never sends back (``turn_left_open``; a history sent as text has no tool
call left open). For the other models (Nova, Llama, Mistral, DeepSeek, Titan...) and an
ARN that hides its model, ``reasoning_effort`` is dropped, as before: Converse has no
common switch, and Nova 2's own (``reasoningConfig``) returns its reasoning redacted.
``thinking_budget_for`` tells the quota what the translation adds to ``maxTokens``.

OpenAI's ``temperature`` (0..2) is clamped to Converse's 0..1, as ``openai_anthropic``
clamps it for Claude; ``top_p`` has the same range on both sides and is sent as is, except
to Claude with a temperature: as ``openai_anthropic`` does, Claude gets the temperature
alone, since its recent models (Sonnet and Haiku 4.5) refuse the two together and many
OpenAI clients set both.

Answers (``CompletionTranslator``): one whose ``stopReason`` says it is malformed
(``malformed_tool_use``, ``malformed_model_output``) is the client's 502 error, charged
its usage (``openai_bedrock_stream.malformed_answer``); otherwise text blocks are joined
into ``message.content``,
``toolUse`` blocks become ``tool_calls``; the text of ``reasoningContent`` blocks
(``reasoningText.text``, any model's) is ``message.reasoning_content``, as the gateway
shows Claude's thinking on Anthropic's API. Their ``signature`` and ``redactedContent``
(encrypted thinking) are never shown: they mean nothing to an OpenAI client, which
cannot send them back. Bedrock does not
name the model that answered, so the client's model name is echoed and ``response_model``
stays None. Prompt tokens count cache reads and writes on top of ``inputTokens`` (the
writes' 1-hour part, from ``cacheDetails``, is kept for the bill); cache reads are also
reported as ``prompt_tokens_details.cached_tokens``. The tier that served the answer
(``serviceTier.type``) is read as ``service_tier``, which prices the request, and shown at
the top level as OpenAI shows it (``openai_bedrock_stream.shown_tier``). Streams are
translated in ``openai_bedrock_stream``.

Errors (``translate_error``): the client's status depends only on the provider's status and
``x-amzn-errortype``, so it can be chosen before the body arrives. A refused signature or
identity (403) means the *gateway's* AWS credentials were refused: the client gets a 502
that says so, and never the provider's message, which can quote the signed request.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from extproc.context import Usage
from extproc.errors import BadRequestError, GatewayError, quoted
from extproc.providers.bedrock_model_ids import base_model_id
from extproc.translators.answer_errors import ProviderAnswerError
from extproc.translators.cache_breakpoints import (
    MARKER,
    cache_control,
    mark,
    mark_last_turn,
    place_cache_points,
)
from extproc.translators.claude_geography import refuse_inference_geo
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
from extproc.translators.foreign_errors import provider_error
from extproc.translators.openai_anthropic import (
    DEFAULT_MAX_TOKENS,
    named_max_tokens,
)

# The stream half; it also holds what both answer forms share (stop reasons, usage, errors).
from extproc.translators.openai_bedrock_stream import (
    StreamTranslator,
    aws_error,
    completion_id,
    finish_reason,
    malformed_answer,
    read_usage,
    served_tier,
    shown_tier,
)
from extproc.translators.openai_chat_extras import (
    before_the_conversation,
    chat_documents,
    converse_document_blocks,
    refuse_audio_output,
    refuse_web_search,
)
from extproc.translators.openai_openai import show_billed_apart
from extproc.translators.pdf_parts import converse_document, name_documents, read_pdf_part
from extproc.translators.response_formats import schema_to_hold
from extproc.translators.tool_arguments import tool_input
from extproc.translators.tool_ids import provider_tool_call_id
from extproc.translators.unreadable_answers import replaced_answer

__all__ = [
    "CompletionTranslator",
    "StreamTranslator",
    "asked_service_tier",
    "check_request",
    "converse_service_tier",
    "request_path",
    "thinking_budget_for",
    "translate_error",
    "translate_request",
]

# botocore's percent_encode keeps only these unreserved characters: ":" in model ids and
# "/" in ARNs are encoded, so the path is the one AWS's own SDKs sign and send.
_PATH_SAFE = "-._~"
# What the client is told cannot do what it asked (response_formats.schema_to_hold).
_PROVIDER = "Bedrock"
# A tuple, not a set: a malformed role (a list, say) must not fail to hash.
_SYSTEM_ROLES = ("system", "developer")
# Chat models without Converse `system` prompts, by the start of their model id.
_NO_SYSTEM_PROMPT_MODELS = (
    "amazon.titan-text-",
    "amazon.titan-tg1-",
    "mistral.mistral-7b-instruct-",
    "mistral.mixtral-8x7b-instruct-",
)
# An OpenAI request's service_tier -> the Converse serviceTier type that serves it. OpenAI
# serves "fast" as priority processing; "reserved" is Bedrock's own name (capacity reserved
# by the account), for clients that know their route ends at Bedrock.
_SERVICE_TIERS = {
    "default": "default",
    "flex": "flex",
    "priority": "priority",
    "fast": "priority",
    "reserved": "reserved",
}
# OpenAI's "the provider chooses": no serviceTier, which Bedrock serves at its standard tier.
_PROVIDER_CHOOSES_TIER = "auto"
# How much of a refused service_tier the error quotes: it is the client's own input.
_QUOTED_TIER_CHARS = 40


def translate_request(
    body: dict[str, Any], *, model_id: str = "", default_max_tokens: int | None = None
) -> dict[str, Any]:
    """The Converse (or ConverseStream) body for an OpenAI chat-completions request.

    ``model_id`` is the id (or ARN) the request goes to, for what differs by model; empty
    when unknown, which sends what most models take. Raises ``BadRequestError`` (naming the
    offending field) for what Converse cannot do.
    """
    service_tier = _check_top_level(body, model_id)
    refuse_inference_geo(body, "Bedrock")
    takes_system = model_takes_system(model_id)
    system, turns = _conversation(body.get("messages"), takes_system)
    # vLLM's RAG documents, read before the conversation (openai_chat_extras).
    before_the_conversation(converse_document_blocks(chat_documents(body)), turns)
    name_documents(turns)
    tool_config = _tool_config(body.get("tools"), body.get("tool_choice"))
    if tool_config is None:
        _tool_history_as_text(turns)
    else:
        _fit_tool_use_ids(turns)
    converse: dict[str, Any] = {"messages": turns}
    if system and takes_system:
        converse["system"] = system
    elif system:
        _open_first_user_turn_with(system, turns)
    claude = is_claude(model_id)
    inference = _inference_config(body, default_max_tokens, claude=claude)
    # Anthropic's own fields, which Converse passes on to Claude.
    claude_fields: dict[str, Any] = {}
    if claude:
        claude_fields = _claude_thinking(body, model_id, turns, inference, default_max_tokens)
    if inference:
        converse["inferenceConfig"] = inference
    if tool_config is not None:
        converse["toolConfig"] = tool_config
        if claude_fields and set(tool_config.get("toolChoice", {})) & {"any", "tool"}:
            raise forced_call_with_thinking()
        if claude and body.get("parallel_tool_calls") is False:
            claude_fields["tool_choice"] = _one_call_at_a_time(tool_config)
    if claude_fields:
        converse["additionalModelRequestFields"] = claude_fields
    if service_tier is not None:
        converse["serviceTier"] = {"type": service_tier}
    output_config = _output_config(body.get("response_format"))
    if output_config is not None:
        converse["outputConfig"] = output_config
    # Last: the blocks are final, a prefill trimmed and a tool history turned to text.
    mark_last_turn(turns, body)
    place_cache_points(converse, model_id)
    return converse


def _output_config(value: Any) -> dict[str, Any] | None:
    """Converse's structured output (``outputConfig.textFormat``) for OpenAI's
    ``json_schema`` response format; None for ``text`` and none (``json_object`` was
    refused by ``_check_top_level``).

    The schema goes as a JSON string, as Converse takes it; ``name`` and ``description``
    go beside it when the client sent them (Converse takes them, optional). OpenAI's
    ``strict`` has no counterpart: Bedrock always holds the answer to the schema, and
    refuses (a ValidationException, the client's 400) a schema its decoding cannot
    enforce, for ``strict: false`` too."""
    spec = schema_to_hold(value, _PROVIDER)
    if spec is None:
        return None
    definition: dict[str, Any] = {"schema": orjson.dumps(spec.schema).decode()}
    if spec.name is not None:
        definition["name"] = spec.name
    if spec.description is not None:
        definition["description"] = spec.description
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}}


def _claude_thinking(
    body: dict[str, Any],
    model_id: str,
    turns: list[dict[str, Any]],
    inference: dict[str, Any],
    default_max_tokens: int | None,
) -> dict[str, Any]:
    """The thinking fields ``reasoning_effort`` asks of Claude (empty for none), with
    ``inference``'s ``maxTokens`` set for it; ``openai_anthropic`` decides, as for
    Anthropic's API. ``turns`` are the ones sent, a tool history as text already."""
    effort = reasoning_effort(body)
    if effort is None or turn_left_open(turns, _calls_a_tool):
        return {}
    named = named_max_tokens(body)
    default = DEFAULT_MAX_TOKENS if default_max_tokens is None else default_max_tokens
    fields: dict[str, Any]
    if takes_adaptive_thinking(model_id):
        fields = {
            "thinking": adaptive_thinking(model_id),
            "output_config": {"effort": adaptive_effort(effort, model_id)},
        }
        if named is None:
            inference["maxTokens"] = default + THINKING_BUDGETS[effort]
    else:
        budget, inference["maxTokens"] = fit_thinking(THINKING_BUDGETS[effort], named, default)
        fields = {"thinking": {"type": "enabled", "budget_tokens": budget}}
    refuse_sampling_with_thinking(inference.get("temperature"), inference.get("topP"))
    return fields


def _calls_a_tool(block: dict[str, Any]) -> bool:
    return "toolUse" in block


def thinking_budget_for(body: dict[str, Any], model_id: str) -> int | None:
    """The thinking budget ``translate_request`` adds to ``maxTokens`` for this OpenAI
    chat body when it names no bound (``THINKING_BUDGETS``, before any fitting); None
    when it sends Claude no thinking: another model, no ``reasoning_effort``, a turn
    left open. For the quota, which reserves the same; it raises the translation's 400s."""
    effort = reasoning_effort(body) if is_claude(model_id) else None
    if effort is None:
        return None
    # Translated, so that the answer is the translation's whatever decides it.
    sent = translate_request(body, model_id=model_id)
    return (
        THINKING_BUDGETS[effort]
        if "thinking" in sent.get("additionalModelRequestFields", {})
        else None
    )


def check_request(
    body: dict[str, Any], *, model_id: str = "", route_prepends_user: bool = False
) -> str | None:
    """Refuse (``BadRequestError`` naming the field) what Converse cannot do and the body
    shows without translating it; the ``serviceTier`` type to ask for, if any.

    Cheap, so it runs before the quota too (``backends.check_pair``): a request limit
    does not count a request that would never reach Bedrock. ``model_id`` as for
    ``translate_request`` (empty: a model that takes a ``system`` prompt and is not
    Claude). ``route_prepends_user``: the route's enrichment puts a user message first,
    so a conversation the client opened with the assistant's message no longer starts
    with it by the time it is translated."""
    if not route_prepends_user:
        _check_conversation_start(body.get("messages"), model_takes_system(model_id))
    return _check_top_level(body, model_id)


def _check_top_level(body: dict[str, Any], model_id: str) -> str | None:
    """``check_request``'s checks of the body's top-level fields."""
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequestError("Bedrock returns one choice per request: n must be 1", param="n")
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise BadRequestError(
            "functions and function_call are not supported: use tools and tool_choice",
            param="functions",
        )
    for field in ("logprobs", "top_logprobs"):
        # Converse returns no log probabilities: answered, the client would read
        # logprobs: null where it asked for them (OpenAI refuses them for its models
        # without them too). false, null and 0 ask for nothing.
        value = body.get(field)
        if value is True or (isinstance(value, int) and not isinstance(value, bool) and value):
            raise BadRequestError(
                f"Bedrock returns no log probabilities: leave '{field}' out", param=field
            )
    # Converse constrains an answer to a schema only: json_object is refused, as for Claude.
    schema_to_hold(body.get("response_format"), _PROVIDER)
    # Converse answers in text, and Claude's web search is not offered on Bedrock
    # (openai_chat_extras); malformed documents are refused before the quota too.
    refuse_audio_output(body, _PROVIDER)
    refuse_web_search(body, _PROVIDER)
    chat_documents(body)
    claude = is_claude(model_id)
    _stop_sequences(body.get("stop"), claude=claude)
    if claude:
        reasoning_effort(body)  # an unknown level is a 400 before the quota counts it
    return converse_service_tier(body.get("service_tier"))


def _stop_sequences(value: Any, *, claude: bool) -> list[str]:
    """Converse's ``stopSequences`` for OpenAI's ``stop`` (a string or a list of them).

    An empty string is left out: it marks no place the answer could end at, and Converse
    refuses it (a stop sequence has a minimum length of 1), so without it the answer is
    the one the client would get anywhere that takes it. A sequence of whitespace alone
    (``"\\n"``) is refused for Claude, which refuses it on Converse as on Anthropic's own
    API (a 400 the client could not tell from its own field, and ``openai_anthropic``
    refuses it the same way): sent without it, the answer would not end where the
    client asked. Other models take it (a newline is a common stop for Llama and
    Mistral), so it is sent to them.
    """
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(item, str) for item in stops):
        raise BadRequestError("stop must be a string or a list of strings", param="stop")
    if claude and any(item and item.isspace() for item in stops):
        raise BadRequestError(
            "Claude takes no stop sequence of whitespace alone (Bedrock refuses it): "
            "leave it out of 'stop'",
            param="stop",
        )
    return [item for item in stops if item]


def _check_conversation_start(messages: Any, takes_system: bool) -> None:
    """Refuse a conversation whose first message with content is the assistant's.

    OpenAI takes one (a chat UI that opens with the assistant's greeting); Converse
    refuses it ("A conversation must start with a user message"), a 400 the client
    could not tell from its own fields. Nothing can stand in for the user's opening
    words without the gateway writing text the user did not write, so the client is
    told, naming ``messages``. A model without a ``system`` prompt is the exception:
    there the system text opens the conversation as a user turn of its own
    (``_open_first_user_turn_with``). An assistant message with nothing in it is left
    out by the translation, so it does not count; what is malformed is left to the
    translation, which names it.
    """
    if not isinstance(messages, list):
        return
    opener = _assistant_opener(messages)
    if opener is not None and (takes_system or not _has_system_text(messages)):
        raise _assistant_first(opener)


def _assistant_opener(messages: list[Any]) -> int | None:
    """The index of the assistant message that opens the conversation, if one does."""
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role in _SYSTEM_ROLES:
            continue
        if role != "assistant":
            return None
        if message.get("tool_calls") or _says_something(message.get("content")):
            return index
    return None


def _assistant_first(index: int) -> BadRequestError:
    return BadRequestError(
        f"messages[{index}] is the assistant's, before any user message: Bedrock needs a "
        "conversation to start with a user message. Send a user message first, or put "
        "the assistant's opening words in the system message",
        param="messages",
    )


def _has_system_text(messages: list[Any]) -> bool:
    """Whether a system or developer message has text: for a model without ``system``,
    it opens the conversation as the user's turn."""
    return any(
        isinstance(message, dict)
        and message.get("role") in _SYSTEM_ROLES
        and _says_something(message.get("content"))
        for message in messages
    )


def _says_something(content: Any) -> bool:
    """Whether a message's content has text the translation keeps (``_texts``)."""
    if isinstance(content, str):
        return _has_text(content)
    if not isinstance(content, list):
        return False
    return any(
        isinstance(part, dict)
        and isinstance(
            text := part.get("refusal" if part.get("type") == "refusal" else "text"), str
        )
        and _has_text(text)
        for part in content
    )


def converse_service_tier(value: Any) -> str | None:
    """Converse's ``serviceTier`` type for an OpenAI request's ``service_tier``; None to
    send none (none asked for, or ``auto``). Raises ``BadRequestError`` naming the field for
    a tier Bedrock does not have."""
    if value is None or value == _PROVIDER_CHOOSES_TIER:
        return None
    tier = _SERVICE_TIERS.get(value) if isinstance(value, str) else None
    if tier is not None:
        return tier
    asked = (
        f"{quoted(value, _QUOTED_TIER_CHARS)} is not a Bedrock service tier"
        if isinstance(value, str)
        else "must be a string"
    )
    raise BadRequestError(
        f"service_tier {asked}: Bedrock serves flex, priority, default and reserved "
        "(fast is served as priority); send auto, or no service_tier, to let Bedrock choose",
        param="service_tier",
    )


def asked_service_tier(body: Any) -> str | None:
    """The ``serviceTier`` type a chat completions request asked Converse for (what
    ``translate_request`` sent), for the stream translator to price a stream cut before
    Bedrock named its tier (``StreamTranslator``'s ``asked_tier``). None when it asked
    for none; never raises, for a tier refused at translation never reaches a stream."""
    value = body.get("service_tier") if isinstance(body, dict) else None
    try:
        return converse_service_tier(value)
    except BadRequestError:
        return None


def model_takes_system(model_id: str) -> bool:
    """Whether the model takes Converse's ``system`` prompt.

    AWS's "Supported models and model features" table lists the chat models that do not:
    Amazon Titan Text and Mistral AI's 7B and 8x7B Instruct, which answer a ``system`` with
    a 400 ValidationException. A model whose id hides it (a provisioned or custom model's
    ARN) is assumed to take one, as all current models do.
    """
    return not base_model_id(model_id).startswith(_NO_SYSTEM_PROMPT_MODELS)


def is_claude(model_id: str) -> bool:
    return base_model_id(model_id).startswith("anthropic.")


def _open_first_user_turn_with(system: list[dict[str, Any]], turns: list[dict[str, Any]]) -> None:
    """Put the system text at the start of the conversation, for a model without ``system``.

    The instructions still reach the model, before anything the user said, which is what
    an OpenAI client meant by them; a 400 for the most common request shape would not.
    Joined into the first text (rather than a block of its own) because how a model's
    prompt template joins text blocks is its own.
    """
    text = "\n\n".join(block["text"] for block in system)
    first = turns[0]
    if first["role"] != "user":
        # A conversation that opens with the assistant: the instructions come first.
        turns.insert(0, {"role": "user", "content": [{"text": text}]})
        return
    blocks = first["content"]
    if "text" in blocks[0]:
        blocks[0] = {"text": f"{text}\n\n{blocks[0]['text']}"}
    else:
        blocks.insert(0, {"text": text})


def request_path(model_id: str, *, stream: bool) -> str:
    """The Converse path for a model id or ARN, e.g. ``/model/a.b-v1%3A0/converse``."""
    action = "converse-stream" if stream else "converse"
    return f"/model/{quote(model_id, safe=_PATH_SAFE)}/{action}"


def _conversation(
    messages: Any, takes_system: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split OpenAI messages into Converse ``system`` blocks and alternating turns.

    ``takes_system``: whether the model takes a ``system`` prompt; without one, system
    text opens the conversation as the user's (``_check_conversation_start``)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("messages must be a non-empty list", param="messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    left_out: str | None = None  # the last message left out for having nothing in it
    # A user message left out before any turn, and the last one left out since the last
    # message with content: they decide whether the conversation can do without them
    # (_check_silent_users).
    first_silent_user: str | None = None
    silent_user: str | None = None
    opener = 0  # the index of the message that opens the first turn
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise BadRequestError(f"{where} must be an object", param=where)
        marker = cache_control(message.get(MARKER), where)
        if message.get("role") in _SYSTEM_ROLES:
            blocks = _marked_text_blocks(message.get("content"), where)
            # A message's prompt-cache breakpoint follows its last block.
            mark(blocks, marker)
            system.extend(blocks)
            continue
        role, blocks = _turn(message, where)
        mark(blocks, marker)
        if not blocks:
            # Converse refuses an empty turn; OpenAI takes one (Claude often answers
            # nothing after a tool result, and clients send that turn back). It says
            # nothing, so it is left out, and the turns around it merge.
            left_out = where
            if role == "user":
                silent_user = where
                if not turns and first_silent_user is None:
                    first_silent_user = where
            continue
        silent_user = None
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            opener = opener if turns else index
            turns.append({"role": role, "content": blocks})
    if not turns:
        if left_out is None:
            raise BadRequestError("messages need a user message", param="messages")
        raise BadRequestError(
            f"{left_out} has no content, nor has any other user or assistant message",
            param=f"{left_out}.content",
        )
    _check_silent_users(turns, first_silent_user, silent_user)
    if turns[0]["role"] == "assistant" and (takes_system or not system):
        # check_request refused the client's before the quota; this is the body as
        # enriched, or a caller's that skipped the check.
        raise _assistant_first(opener)
    _trim_prefill(turns)
    return system, turns


def _check_silent_users(turns: list[dict[str, Any]], first: str | None, last: str | None) -> None:
    """Refuse a conversation that an empty user message left out would change.

    ``first``: one that opened the conversation before the assistant's message. Left out,
    the conversation would start with the assistant, which Converse refuses ("A
    conversation must start with a user message", though the client's did). ``last``: one
    that said nothing after the assistant's message. Left out, the assistant's message
    would be last, which the model reads as a prefill to continue, not as a turn to
    answer: the client would get a continuation it did not ask for. No placeholder is
    sent in its place: it would be text the user did not write.
    """
    if first is not None and turns[0]["role"] == "assistant":
        raise BadRequestError(
            f"{first}.content is empty: Bedrock needs text in the first user message, "
            "since Converse requires a conversation to start with the user",
            param=f"{first}.content",
        )
    if last is not None and turns[-1]["role"] == "assistant":
        raise BadRequestError(
            f"{last}.content is empty: Bedrock needs text in the last user message. Without "
            "it the conversation ends with the assistant's message, which the model would "
            "continue instead of answering",
            param=f"{last}.content",
        )


def _turn(message: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    """The Converse role and content blocks of a user, assistant or tool message."""
    role = message.get("role")
    if role == "user":
        return role, _user_blocks(message.get("content"), where)
    if role == "assistant":
        return role, _assistant_blocks(message, where)
    if role == "tool":
        return "user", [_tool_result(message, where)]
    raise BadRequestError(f"{where}.role is not supported: {role!r}", param=f"{where}.role")


def _trim_prefill(turns: list[dict[str, Any]]) -> None:
    """Strip the trailing whitespace of a final assistant turn (a prefill).

    Claude on Converse refuses "final assistant content cannot end with trailing
    whitespace"; the whitespace would only be where the model starts writing anyway.
    """
    last = turns[-1]
    if last["role"] != "assistant":
        return
    blocks = last["content"]
    # Blank text is never added: what is left after the strip is not empty.
    if "text" in blocks[-1]:
        blocks[-1]["text"] = blocks[-1]["text"].rstrip()


def _has_text(text: str) -> bool:
    """Whether a text is worth a Converse text block.

    Converse refuses a text block that is empty or only whitespace ("... is blank") with a
    400, while OpenAI takes both: models often answer "\n\n" before their tool calls and
    clients send that turn back. Such text carries nothing, so it is left out.
    """
    return bool(text) and not text.isspace()


def _texts(content: Any, where: str) -> list[str]:
    """The non-blank texts of a string or a list of text parts (refusals read as text)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if _has_text(content) else []
    if not isinstance(content, list):
        raise BadRequestError(
            f"{where}.content must be a string or a list", param=f"{where}.content"
        )
    texts: list[str] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        key = "refusal" if kind == "refusal" else "text"
        value = part.get(key) if isinstance(part, dict) else None
        if kind not in ("text", "refusal") or not isinstance(value, str):
            raise BadRequestError(
                f"{where}.content[{index}] must be a text part", param=f"{where}.content"
            )
        if _has_text(value):
            texts.append(value)
    return texts


def _marked_text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """The text blocks of a string or of text parts (``_texts``), each part's
    prompt-cache marker on its block, or the one before it for blank text
    (``cache_breakpoints.mark``)."""
    texts = _texts(content, where)  # refuses what is no text part, naming it
    if not isinstance(content, list):
        return [{"text": text} for text in texts]
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        blocks.extend({"text": text} for text in _texts([part], where))
        mark(blocks, cache_control(part.get(MARKER), f"{where}.content[{index}]"))
    return blocks


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return [{"text": text} for text in _texts(content, where)]
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        here = f"{where}.content[{index}]"
        if kind == "image_url":
            blocks.append(_image(part.get("image_url"), here))
        elif kind == "file":
            blocks.append(converse_document(read_pdf_part(part, here, _PROVIDER)))
        elif kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequestError(f"{here}.text must be a string", param=here)
            if _has_text(text):
                blocks.append({"text": text})
        else:
            raise BadRequestError(
                f"{here}: content parts of type {kind!r} are not supported for Bedrock models",
                param=here,
            )
        mark(blocks, cache_control(part.get(MARKER), here))
    return blocks


def _image(value: Any, where: str) -> dict[str, Any]:
    """A Converse image block from an OpenAI ``image_url`` (a base64 data URL)."""
    url = value.get("url") if isinstance(value, dict) else value
    param = f"{where}.image_url.url"
    if not isinstance(url, str):
        raise BadRequestError(f"{param} must be a string", param=param)
    if url.startswith(("http://", "https://")):
        raise BadRequestError(
            "Bedrock takes images as bytes, not URLs: send the image as a data URL "
            "(data:image/png;base64,...)",
            param=param,
        )
    # Partition, not a regex: the data part can be megabytes long.
    header, _, data = url.partition(",")
    mime, _, encoding = header.removeprefix("data:").partition(";")
    base64_url = header.startswith("data:") and encoding == "base64" and bool(data)
    found = image_format(mime, data) if base64_url else None
    if found is None:
        raise BadRequestError(
            "image_url must be a base64 data URL of a png, jpeg, gif or webp image", param=param
        )
    # Converse's JSON carries blobs as base64: the client's encoding is passed as is.
    return {"image": {"format": found, "source": {"bytes": data}}}


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = _marked_text_blocks(message.get("content"), where)
    calls = message.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise BadRequestError(f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
    for index, call in enumerate(calls):
        here = f"{where}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str):
            raise BadRequestError(f"{here} must have an id and a function", param=here)
        name, given = function.get("name"), tool_input(function.get("arguments"))
        if not isinstance(name, str) or given is None:
            raise BadRequestError(
                f"{here}.function needs a name and arguments that are a string (the JSON"
                " text of the call's input)",
                param=f"{here}.function",
            )
        blocks.append({"toolUse": {"toolUseId": call["id"], "name": name, "input": given}})
    return blocks


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise BadRequestError(
            f"{where}.tool_call_id must be a string", param=f"{where}.tool_call_id"
        )
    content = message.get("content")
    texts = _texts(content, where) or [""]
    result = {"toolResult": {"toolUseId": call_id, "content": [{"text": text} for text in texts]}}
    # A part's marker: the cache point follows the result, which is one block of the prompt.
    for index, part in enumerate(content if isinstance(content, list) else ()):
        mark([result], cache_control(part.get(MARKER), f"{where}.content[{index}]"))
    return result


def _inference_config(
    body: dict[str, Any], default_max_tokens: int | None, *, claude: bool
) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequestError(f"{field} must be a positive integer", param=field)
        config["maxTokens"] = value
        break
    else:
        if default_max_tokens is not None:
            config["maxTokens"] = default_max_tokens
    for field, name in (("temperature", "temperature"), ("top_p", "topP")):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise BadRequestError(f"{field} must be a number", param=field)
        config[name] = value
    if "temperature" in config:
        # OpenAI's 0..2 into Converse's 0..1, as openai_anthropic clamps for Claude: a
        # client's 1.5 works whichever provider serves the model, instead of a 400 from AWS.
        config["temperature"] = min(max(config["temperature"], 0.0), 1.0)
        if claude:
            # Claude Sonnet and Haiku 4.5 refuse temperature and topP together (a 400);
            # the temperature is what OpenAI clients set on purpose far more often.
            config.pop("topP", None)
    stop = _stop_sequences(body.get("stop"), claude=claude)
    if stop:
        config["stopSequences"] = stop
    return config


def _tool_config(tools: Any, choice: Any) -> dict[str, Any] | None:
    """Converse's ``toolConfig``, or None when the model is to call no tool."""
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise BadRequestError("tools must be a list", param="tools")
    specs = [_tool_spec(tool, index) for index, tool in enumerate(tools)]
    config: dict[str, Any] = {"tools": specs}
    if choice is None or choice == "auto":
        return config
    if choice == "none":
        # Converse has no "none": without the tools the model cannot call one.
        return None
    if choice == "required":
        config["toolChoice"] = {"any": {}}
        return config
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise BadRequestError(
            "tool_choice must be none, auto, required or a named function", param="tool_choice"
        )
    config["toolChoice"] = {"tool": {"name": name}}
    return config


def _one_call_at_a_time(tool_config: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's ``tool_choice`` with ``disable_parallel_tool_use``, for Claude asked for
    ``parallel_tool_calls: false``; the choice moves out of ``toolConfig``.

    Converse has no such switch, but passes ``additionalModelRequestFields`` on to Claude,
    whose ``tool_choice`` carries it (as ``openai_anthropic`` sends it). Claude needs the
    choice's ``type`` there, and Bedrock refuses one beside ``toolConfig.toolChoice``
    ("The additional field tool_choice/type conflicts with the existing field
    toolConfig.toolChoice.tool"), so the whole choice goes in the additional field.
    """
    choice = tool_config.pop("toolChoice", {})
    if "tool" in choice:
        return {"type": "tool", "name": choice["tool"]["name"], "disable_parallel_tool_use": True}
    kind = "any" if "any" in choice else "auto"
    return {"type": kind, "disable_parallel_tool_use": True}


def _fit_tool_use_ids(turns: list[dict[str, Any]]) -> None:
    """Give every ``toolUse`` and ``toolResult`` block a ``toolUseId`` Converse takes.

    Done once the blocks are known to be sent as blocks: a history sent as text keeps the
    client's own ids, which text has no rule for.
    """
    for turn in turns:
        for block in turn["content"]:
            for kind in ("toolUse", "toolResult"):
                if kind in block:
                    block[kind]["toolUseId"] = provider_tool_call_id(block[kind]["toolUseId"])


def _tool_history_as_text(turns: list[dict[str, Any]]) -> None:
    """Rewrite the conversation's ``toolUse`` and ``toolResult`` blocks as text blocks.

    For a request that sends no tools: Converse refuses tool blocks without a ``toolConfig``
    (a 400 ValidationException), and sending one would offer the model tools the client did
    not offer (Converse has no "none"), so a client asking for a final summary could get a
    tool call instead. As text, each call keeps its tool, arguments and id, and each result
    the call it answers, so the model reads what happened; the turns keep their roles.
    """
    names = {
        block["toolUse"]["toolUseId"]: block["toolUse"]["name"]
        for turn in turns
        for block in turn["content"]
        if "toolUse" in block
    }
    for turn in turns:
        turn["content"] = [_tool_block_as_text(block, names) for block in turn["content"]]


def _tool_block_as_text(block: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """A text block saying what a tool block said; other blocks are returned as they are."""
    text: dict[str, Any]
    if "toolUse" in block:
        call = block["toolUse"]
        arguments = orjson.dumps(call["input"]).decode()
        text = {
            "text": f"[called tool {call['name']} (call id {call['toolUseId']})"
            f" with arguments {arguments}]"
        }
    elif "toolResult" in block:
        result = block["toolResult"]
        call_id = result["toolUseId"]
        name = names.get(call_id)
        # A result whose call is not in the history still says which call it answers.
        tool = f"tool {name} (call id {call_id})" if name else f"call id {call_id}"
        heading = f"[result of {tool}]"
        output = "\n".join(part["text"] for part in result["content"] if part["text"])
        text = {"text": f"{heading}\n{output}" if output else f"{heading} (no output)"}
    else:
        return block
    # The text stands where the block stood: a prompt-cache breakpoint after it stays.
    mark([text], block.get(MARKER))
    return text


def _tool_spec(tool: Any, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or tool.get("type", "function") != "function":
        raise BadRequestError(f"{where}: only function tools are supported", param=where)
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequestError(f"{where}.function.name is required", param=f"{where}.function")
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    spec: dict[str, Any] = {"name": name, "inputSchema": {"json": schema}}
    # Converse refuses an empty description; OpenAI treats a missing one as none.
    if isinstance(function.get("description"), str) and function["description"]:
        spec["description"] = function["description"]
    entry: dict[str, Any] = {"toolSpec": spec}
    mark([entry], cache_control(tool.get(MARKER), where))
    return entry


# --- answers -------------------------------------------------------------------------------


class CompletionTranslator:
    """A Converse answer, buffered, rewritten as an OpenAI ``chat.completion``."""

    def __init__(
        self,
        *,
        model: str,
        request_id: str,
        created: int,
        asked_tier: str | None = None,
        bill_apart: bool = False,
    ) -> None:
        """``asked_tier``: the tier the request asked for, where Bedrock serves it as
        asked (``backends.bedrock_tier_asked``): it prices an answer cut before its body
        named the tier, as a cut stream is. ``bill_apart``: the usage shows what OpenAI's
        counts leave out, for the failover route that bills it
        (``openai_openai.show_billed_apart``)."""
        self.usage: Usage | None = None
        # Bedrock does not say which model answered.
        self.response_model: str | None = None
        # The tier Bedrock served the answer at (serviceTier.type): it prices the request.
        # Until the answer names it, the tier asked for, which serves it (above).
        self.service_tier: str | None = asked_tier
        # The client's status once an answer could not be read as a Converse response
        # (unreadable_answers), and the request's error.
        self.status: int | None = None
        self.error: GatewayError | None = None
        self._model = model
        self._id = completion_id(request_id)
        self._created = created
        self._bill_apart = bill_apart
        self._parts: list[bytes] = []
        # The OpenAI answer built, for response guards (so it is not parsed again).
        self.answer: dict[str, Any] | None = None

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        self._parts.append(chunk)
        if not end_of_stream:
            return b""
        body, self._parts = b"".join(self._parts), []
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        completion = self._completion(parsed) if isinstance(parsed, dict) else None
        if completion is None:
            # No answer, billed nothing: no tier served it either.
            self.usage, self.service_tier = None, None
            replaced = replaced_answer(
                parsed, "the provider's answer could not be read as a Bedrock Converse response"
            )
            self.error = replaced.recorded
            self.status = replaced.shown.status
            return replaced.shown.body()
        malformed = malformed_answer(parsed.get("stopReason"))
        if malformed is not None:
            # Broken, not finished: the client gets the error (a 502 the openai SDK
            # retries), and the request is charged the usage Bedrock billed for it.
            self.error = ProviderAnswerError(
                malformed.message, error_type=malformed.error_type, code=malformed.code
            )
            self.status = malformed.status
            return malformed.body()
        self.answer = completion
        return orjson.dumps(completion)

    def _completion(self, parsed: dict[str, Any]) -> dict[str, Any] | None:
        output = parsed.get("output")
        message = output.get("message") if isinstance(output, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            return None
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in content:
            if not isinstance(block, dict):
                continue
            if isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif isinstance(block.get("reasoningContent"), dict):
                # The thinking's text only: its signature and redacted (encrypted)
                # thinking mean nothing to an OpenAI client.
                reasoning = block["reasoningContent"].get("reasoningText")
                thought = reasoning.get("text") if isinstance(reasoning, dict) else None
                if isinstance(thought, str):
                    thoughts.append(thought)
            elif isinstance(block.get("toolUse"), dict):
                tool = block["toolUse"]
                arguments = orjson.dumps(tool.get("input", {})).decode()
                calls.append(
                    {
                        "id": tool.get("toolUseId"),
                        "type": "function",
                        "function": {"name": tool.get("name"), "arguments": arguments},
                    }
                )
        answer: dict[str, Any] = {
            "role": "assistant",
            # OpenAI's content is null beside tool calls only: a turn with no text (spent
            # thinking, say) is "", as openai_anthropic answers it.
            "content": "".join(texts) if texts or not calls else None,
            "refusal": None,
        }
        if thoughts:
            # Where OpenAI-compatible servers (and the gateway for Anthropic) put it;
            # thoughts apart (interleaved thinking) set apart as Anthropic's are.
            answer["reasoning_content"] = "\n\n".join(thoughts)
        if calls:
            answer["tool_calls"] = calls
        completion: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": [
                {
                    "index": 0,
                    "message": answer,
                    "logprobs": None,
                    "finish_reason": finish_reason(
                        parsed.get("stopReason"), called_tools=bool(calls)
                    ),
                }
            ],
        }
        usage = read_usage(parsed.get("usage"))
        if usage is not None:
            self.usage, completion["usage"] = usage
            if self._bill_apart:
                show_billed_apart(completion["usage"], self.usage)
        self.service_tier = served_tier(parsed.get("serviceTier"))
        shown = shown_tier(self.service_tier)
        if shown is not None:
            completion["service_tier"] = shown
        return completion


# --- errors --------------------------------------------------------------------------------


def error_name(error_type_header: str | None) -> str:
    """The error name in ``x-amzn-errortype``, e.g. ``ThrottlingException:http://...``."""
    if not error_type_header:
        return ""
    return error_type_header.split(":", 1)[0].rsplit("#", 1)[-1].strip()


def translate_error(status: int, body: bytes, error_type_header: str | None) -> tuple[int, bytes]:
    """The client's status and OpenAI-shaped body for a Bedrock error answer: Bedrock's
    ``{"message"}``, or the message of a proxy's error in another API's shape."""
    found = provider_error(body)
    return aws_error(error_name(error_type_header), status, found.message if found else "")

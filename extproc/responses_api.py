"""OpenAI Responses API requests (``POST /v1/responses``): what the gateway accepts.

A Responses call is billed like a chat completion (input and output tokens), so the
checks here are those that decide what the gateway counts, reserves and guards; the
provider checks the rest. A request that fails one is refused with a 400 naming the
field, before it reserves quota or reaches the provider:

- ``input``: a string, or a non-empty array of items (objects: messages, tool calls,
  tool outputs; a ``type``, when given, a string), at most ``limits.max_messages`` of
  them. A request whose context the provider holds (a stored ``prompt``,
  ``previous_response_id``, ``conversation``) may leave it out or send an empty array,
  as OpenAI allows: the stored prompt's messages or the conversation are the input;
- ``prompt`` (a stored prompt): an object (or null), its ``variables`` an object (or
  null) of strings or input objects (``input_text``, images, files). The provider
  writes them into the prompt, so guards and the estimate read their text
  (``guardrails.responses_text``); a shape they could not read is refused rather than
  passed unread to a provider that might accept it;
- ``instructions``: a string (or null): guards and the estimate read it as the
  system prompt;
- ``max_output_tokens``: an integer >= 1 (or null), the completion allowance the
  quota reserves and a hard cap lowers;
- ``background``: not true. A background response is answered at once (``queued``)
  and generated later; its usage is only known to whoever polls
  ``GET /v1/responses/{id}``, where the gateway cannot bill it;
- no ``messages`` (a body meant for chat completions).

``stream`` must be a boolean, as on every generating route (``ChatRequestStage``).

Two more endpoints take a Responses body, checked the same way where they share its
fields (``messages`` refused, ``input``, ``instructions``), and neither streams
(``stream`` may only be false or left out):

- compaction (``POST /v1/responses/compact``, ``check_compact_body``): ``input`` (a string
  or items, nullable) may be left out with a ``previous_response_id``, the only context
  the provider holds that the endpoint takes. It generates, and is billed; it has no
  completion allowance (no ``max_output_tokens``), so the quota reserves
  ``quotas.default_max_tokens`` for it;
- token counting (``POST /v1/responses/input_tokens``, ``check_input_tokens_body``): the
  body of the ``/v1/responses`` call to count; ``input`` may be left out with a
  ``previous_response_id`` or a ``conversation`` (the endpoint takes no stored
  ``prompt``). A count generates nothing and is never billed.
"""

from __future__ import annotations

from typing import Any

from extproc.config.model import RouteApi
from extproc.errors import BadRequestError
from extproc.openai_inputs import positive_int

# The client APIs whose request is a Responses API body: guards, the estimate and
# content capture read them alike (``guardrails.responses_text``).
RESPONSES_REQUESTS = frozenset(
    {
        RouteApi.OPENAI_RESPONSES,
        RouteApi.OPENAI_RESPONSES_COMPACT,
        RouteApi.OPENAI_RESPONSES_INPUT_TOKENS,
    }
)

# The longest variable name a refusal repeats.
_MAX_NAME = 64
# What may stand in for ``input``: context the provider holds.
_STORED_CONTEXT = "a stored 'prompt', 'previous_response_id' or 'conversation'"
# Those a token count takes, and the one a compaction takes.
_COUNTED_CONTEXT = "'previous_response_id' or 'conversation'"
_PREVIOUS_RESPONSE = "'previous_response_id'"


def check_responses_body(body: dict[str, Any], max_items: int) -> None:
    """Refuse a body the gateway cannot count, guard or bill (the module docstring)."""
    _check_text(body, max_items, _stored_context(body), _STORED_CONTEXT)
    _check_prompt(body.get("prompt"))
    allowance = body.get("max_output_tokens")
    if allowance is not None and not positive_int(allowance):
        raise BadRequestError(
            "'max_output_tokens' must be an integer >= 1", param="max_output_tokens"
        )
    background = body.get("background")
    if background is not None and not isinstance(background, bool):
        raise BadRequestError("'background' must be a boolean", param="background")
    if background:
        raise BadRequestError(
            "background responses are not served by this gateway: their usage is only "
            "known after the call returns, where it cannot be billed; send the request "
            "without 'background'",
            param="background",
            code="unsupported_parameter",
        )


def check_compact_body(body: dict[str, Any], max_items: int) -> None:
    """Refuse a compaction body the gateway cannot count, guard or bill (the module
    docstring)."""
    stored = body.get("previous_response_id") is not None
    _check_text(body, max_items, stored, _PREVIOUS_RESPONSE)
    _check_not_streamed(body, "compaction (/v1/responses/compact)")


def check_input_tokens_body(body: dict[str, Any], max_items: int) -> None:
    """Refuse a token count's body that guards could not read (the module docstring)."""
    stored = body.get("previous_response_id") is not None or body.get("conversation") is not None
    _check_text(body, max_items, stored, _COUNTED_CONTEXT)
    _check_not_streamed(body, "token counting (/v1/responses/input_tokens)")


def _check_text(body: dict[str, Any], max_items: int, stored_context: bool, stands_in: str) -> None:
    """What every Responses body is checked for: no ``messages``, an ``input`` guards and
    the estimate read (which ``stands_in`` may replace), ``instructions`` a string."""
    if "messages" in body:
        raise BadRequestError(
            "this is a Responses API route: send 'input', not 'messages' "
            "(chat completions are served on /v1/chat/completions)",
            param="messages",
        )
    _check_input(body.get("input"), max_items, stored_context, stands_in)
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        # The gateway checks whose response it is (stages.response_owner) by this id.
        raise BadRequestError(
            "'previous_response_id' must be a non-empty string", param="previous_response_id"
        )
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequestError("'instructions' must be a string", param="instructions")


def _check_not_streamed(body: dict[str, Any], endpoint: str) -> None:
    """An endpoint that answers in one JSON object: ``stream`` false or left out. A stream
    asked for would come back as the provider's 400 after the quota counted the request."""
    stream = body.get("stream")
    if stream is not None and stream is not False:
        raise BadRequestError(
            f"{endpoint} answers in one JSON object and does not stream: send the request "
            "without 'stream'",
            param="stream",
            code="unsupported_parameter",
        )


def _stored_context(body: dict[str, Any]) -> bool:
    """Whether the provider adds context of its own: a stored prompt, an earlier response,
    or a conversation."""
    return (
        isinstance(body.get("prompt"), dict)
        or body.get("previous_response_id") is not None
        or body.get("conversation") is not None
    )


def _check_input(value: Any, max_items: int, stored_context: bool, stands_in: str) -> None:
    if isinstance(value, str):
        if not value:
            raise BadRequestError("'input' must not be an empty string", param="input")
        return
    if stored_context and (value is None or value == []):
        return  # the stored prompt or conversation is the input
    if not isinstance(value, list) or not value:
        raise BadRequestError(
            "'input' is required: a string or a non-empty array of input items "
            f"(it may be left out with {stands_in})",
            param="input",
        )
    if len(value) > max_items:
        raise BadRequestError(
            f"'input' has {len(value)} items; the limit is {max_items}", param="input"
        )
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise BadRequestError(
                f"input[{index}] must be an object (a message or another input item)",
                param=f"input[{index}]",
            )
        if not isinstance(item.get("type", ""), str):
            # Guards and the estimate read an item by its type: one they cannot name is
            # refused rather than passed unread.
            raise BadRequestError(
                f"input[{index}].type must be a string", param=f"input[{index}].type"
            )


def _check_prompt(prompt: Any) -> None:
    """A stored prompt's reference: its variables' text is read by guards and the estimate,
    so a shape they cannot read is refused (the module docstring)."""
    if prompt is None:
        return
    if not isinstance(prompt, dict):
        raise BadRequestError(
            "'prompt' must be an object: {'id': ..., 'variables': {...}}", param="prompt"
        )
    variables = prompt.get("variables")
    if variables is None:
        return
    if not isinstance(variables, dict):
        raise BadRequestError(
            "'prompt.variables' must be an object of names to values", param="prompt.variables"
        )
    for name, value in variables.items():
        if not isinstance(value, str | dict):
            # The name is the client's: kept short for the log line's error message.
            param = f"prompt.variables.{name[:_MAX_NAME]}"
            raise BadRequestError(
                f"'{param}' must be a string or an input object "
                "(input_text, input_image, input_file)",
                param=param,
            )

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
"""

from __future__ import annotations

from typing import Any

from extproc.errors import BadRequestError
from extproc.openai_inputs import positive_int

# The longest variable name a refusal repeats.
_MAX_NAME = 64


def check_responses_body(body: dict[str, Any], max_items: int) -> None:
    """Refuse a body the gateway cannot count, guard or bill (the module docstring)."""
    if "messages" in body:
        raise BadRequestError(
            "this is a Responses API route: send 'input', not 'messages' "
            "(chat completions are served on /v1/chat/completions)",
            param="messages",
        )
    _check_input(body.get("input"), max_items, _stored_context(body))
    _check_prompt(body.get("prompt"))
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequestError("'instructions' must be a string", param="instructions")
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


def _stored_context(body: dict[str, Any]) -> bool:
    """Whether the provider adds context of its own: a stored prompt, an earlier response,
    or a conversation."""
    return (
        isinstance(body.get("prompt"), dict)
        or body.get("previous_response_id") is not None
        or body.get("conversation") is not None
    )


def _check_input(value: Any, max_items: int, stored_context: bool) -> None:
    if isinstance(value, str):
        if not value:
            raise BadRequestError("'input' must not be an empty string", param="input")
        return
    if stored_context and (value is None or value == []):
        return  # the stored prompt or conversation is the input
    if not isinstance(value, list) or not value:
        raise BadRequestError(
            "'input' is required: a string or a non-empty array of input items "
            "(it may be left out with a stored 'prompt', 'previous_response_id' or "
            "'conversation')",
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

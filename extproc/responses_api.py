"""OpenAI Responses API requests (``POST /v1/responses``): what the gateway accepts.

A Responses call is billed like a chat completion (input and output tokens), so the
checks here are those that decide what the gateway counts, reserves and guards; the
provider checks the rest. A request that fails one is refused with a 400 naming the
field, before it reserves quota or reaches the provider:

- ``input``: a string, or a non-empty array of items (objects: messages, tool calls,
  tool outputs), at most ``limits.max_messages`` of them;
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


def check_responses_body(body: dict[str, Any], max_items: int) -> None:
    """Refuse a body the gateway cannot count, guard or bill (the module docstring)."""
    if "messages" in body:
        raise BadRequestError(
            "this is a Responses API route: send 'input', not 'messages' "
            "(chat completions are served on /v1/chat/completions)",
            param="messages",
        )
    _check_input(body.get("input"), max_items)
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


def _check_input(value: Any, max_items: int) -> None:
    if isinstance(value, str):
        if not value:
            raise BadRequestError("'input' must not be an empty string", param="input")
        return
    if not isinstance(value, list) or not value:
        raise BadRequestError(
            "'input' is required: a string or a non-empty array of input items", param="input"
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

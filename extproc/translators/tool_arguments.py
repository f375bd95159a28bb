"""A chat tool call's ``arguments``, as the input object Anthropic and Bedrock take.

OpenAI's chat API carries a call's arguments as a string and takes any string back in
a conversation's history. Anthropic's ``tool_use.input`` and Converse's
``toolUse.input`` take only a JSON object. A call the model did not finish (its answer
cut by the token limit, ``finish_reason: "length"``, the client having joined the
streamed fragments into the start of an object) comes back as a string that is no JSON
object; refused, the conversation could never go on, since every later request carries
it. So such a string goes as ``{"unparsed_arguments": <the string>}``: the model reads
exactly what it wrote, and sees that it was not a whole call. The client's own record
of the call is not changed.
"""

from __future__ import annotations

from typing import Any

import orjson

# Where a call's arguments go when they are not a JSON object (docs/providers.md).
UNPARSED_KEY = "unparsed_arguments"


def tool_input(arguments: Any) -> dict[str, Any] | None:
    """The input object for a call's ``arguments``; None when they are not a string
    (OpenAI refuses those too: the caller answers a 400 naming the field)."""
    if arguments is None:
        # Models answer a tool without parameters with empty arguments as often as with {}.
        return {}
    if not isinstance(arguments, str):
        return None
    if not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    return {UNPARSED_KEY: arguments}

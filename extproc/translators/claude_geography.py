"""Where Claude runs a request: Anthropic's ``inference_geo``, asked by an OpenAI client.

Anthropic's Messages API takes ``inference_geo`` (``us``: US-only inference, billed at a
multiple of the price; ``global``, the default) and reports where the request ran in
``usage.inference_geo``. OpenAI's chat API has no such field, so the gateway takes one
as its own extension of a chat completions body (the official ``openai`` client sends it
with ``extra_body={"inference_geo": "us"}``) and passes it on to Anthropic's API
(``openai_anthropic``); the answer's geography prices the request as on ``/v1/messages``.

Claude on Bedrock and on Vertex AI takes no such field: the geography there is the
endpoint's region or the inference profile's (Bedrock's ``us.`` ids), which the operator
chose. A request asking for a geography other than ``global`` is refused there with a 400
naming the field rather than served where the client asked it not to run (a failover chain
skips such a member, as it skips any that cannot serve the body).
"""

from __future__ import annotations

import re
from typing import Any

from extproc.errors import BadRequestError

FIELD = "inference_geo"
# Anthropic's default geography: no restriction, so any provider serves it.
_GLOBAL = "global"
# A geography as Anthropic names one ("us"); Anthropic refuses one it does not know.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def asked_inference_geo(body: dict[str, Any]) -> str | None:
    """The geography an OpenAI chat body asks Claude to run in; None when it names none.
    A value that is no geography's name is a 400 naming the field."""
    value = body.get(FIELD)
    if value is None:
        return None
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise BadRequestError(
            f'\'{FIELD}\' must be the name of an inference geography, such as "us" or "global"',
            param=FIELD,
        )
    return value


def refuse_inference_geo(body: dict[str, Any], provider: str) -> None:
    """A 400 for a body asking a ``provider`` that takes no ``inference_geo`` (Bedrock,
    Vertex AI) for a geography other than ``global``."""
    asked = asked_inference_geo(body)
    if asked is not None and asked != _GLOBAL:
        raise BadRequestError(
            f"'{FIELD}' is Anthropic's API's: {provider} runs the model in the region of "
            "its endpoint or inference profile, which the gateway's operator chose, and "
            f"cannot be asked to run it in {asked!r}; leave '{FIELD}' out, or use a model "
            "served by Anthropic's API",
            param=FIELD,
        )

"""OpenAI's Moderations API (``POST /v1/moderations``): what a valid body is, and the model
a body that names none asks for.

A moderation classifies its input (harassment, violence, self-harm...) and generates
nothing; OpenAI does not charge for it and its answer carries no ``usage``. The gateway
passes the body on as the client sent it, under the provider's name for the model, to
OpenAI-compatible providers alone (``backends``), and meters it as a token count is
(``config.model.UNMETERED_APIS``): one request for request-rate limits and in every
ledger, zero tokens, nothing reserved, no token or cost limit refusing it.

``input`` takes OpenAI's three shapes:

- one string;
- an array of strings (one result each);
- an array of input parts, ``{"type": "text", "text": ...}`` and
  ``{"type": "image_url", "image_url": {"url": ...}}`` (one result for them all; the
  omni models read images).

``model`` is optional, as at OpenAI: a body without one asks for OpenAI's default,
``omni-moderation-latest`` (``DEFAULT_MODEL``), which is served only where the config
names a model (or alias) of that name; the provider gets the model's provider name
spliced into the body. A shape the provider would refuse anyway is refused here first,
with a 400 naming the field, before it counts in a request limit.
"""

from __future__ import annotations

from typing import Any

from extproc.errors import BadRequestError

# Where an OpenAI-compatible provider serves moderation, under its API path.
ENDPOINT = "/moderations"
# OpenAI's default when a body names no model.
DEFAULT_MODEL = "omni-moderation-latest"
# The most strings one request may classify (OpenAI documents no limit; the gateway
# keeps one, as for embeddings' inputs, so a body cannot carry millions of results).
MAX_INPUTS = 2048
_SHAPES = (
    "'input' is required: a string, an array of strings, or an array of input parts "
    '({"type": "text", "text": ...} and {"type": "image_url", "image_url": {"url": ...}})'
)


def check_moderations_body(body: dict[str, Any]) -> None:
    """Refuse a body whose ``input`` or ``model`` is not of a shape OpenAI takes, or one
    meant for another endpoint (``messages``, ``stream``)."""
    if "messages" in body:
        raise BadRequestError(
            "this is a moderations route: send 'input', not 'messages' "
            "(chat completions are served on /v1/chat/completions)",
            param="messages",
        )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequestError("'model' must be a string", param="model")
    if body.get("stream") not in (None, False):
        raise BadRequestError("moderations cannot be streamed", param="stream")
    _check_input(body.get("input"))


def _check_input(value: Any) -> None:
    if isinstance(value, str):
        return  # OpenAI classifies an empty string too
    if not isinstance(value, list) or not value:
        raise BadRequestError(_SHAPES, param="input")
    if len(value) > MAX_INPUTS:
        raise BadRequestError(
            f"'input' has {len(value)} entries; the limit is {MAX_INPUTS}", param="input"
        )
    if all(isinstance(item, str) for item in value):
        return
    if not all(isinstance(item, dict) for item in value):
        raise BadRequestError(
            "'input' must be an array of strings or an array of input parts, not a mix",
            param="input",
        )
    for index, item in enumerate(value):
        _check_part(item, f"input[{index}]")


def _check_part(part: dict[str, Any], where: str) -> None:
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise BadRequestError(f"'{where}.text' must be a string", param=f"{where}.text")
        return
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else None
        if not isinstance(url, str) or not url:
            raise BadRequestError(
                f"'{where}.image_url' must be an object with a 'url' string",
                param=f"{where}.image_url",
            )
        return
    raise BadRequestError(f'\'{where}.type\' must be "text" or "image_url"', param=f"{where}.type")

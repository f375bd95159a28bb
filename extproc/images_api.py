"""OpenAI's Images API requests: what a valid body is, and what it may cost.

An image generation (``POST /v1/images/generations``) reads a text ``prompt`` and draws
``n`` pictures with a GPT Image model (gpt-image-1, gpt-image-1-mini), which bills by
tokens: the prompt's, and each picture's (``usage.output_tokens``; a 1024x1024 picture
is 272, 1,056 or 4,160 tokens at low, medium or high quality). The gateway passes the
body through to an OpenAI-compatible provider and bills the answer's ``usage``
(``translators.openai_image_usage``).

The checks are the ones that decide what the gateway counts or guards: ``prompt`` (the
text guards read and the quota estimates), ``model`` (which provider and price; the
gateway needs it named, where OpenAI would pick its default), ``n``, ``quality``,
``size`` (the pictures the quota reserves for), ``stream`` and ``partial_images``. A
body the provider would refuse for them is refused here first with the same meaning
(400, naming the field), before it reserves quota or reaches the provider.

Image edits and variations (``/v1/images/edits``, ``/variations``) send their pictures
as ``multipart/form-data``, which the gateway does not read: their path is refused with
a 400 naming the endpoint that is served (``refuse_unserved_path``).
"""

from __future__ import annotations

from typing import Any

from extproc.errors import BadRequestError, NotFoundError
from extproc.quota.estimate import CHARS_PER_TOKEN

# Under the provider's API path (``/v1`` for OpenAI).
GENERATIONS_ENDPOINT = "/images/generations"
# The Images API's endpoints that take multipart/form-data, which the gateway does not read.
MULTIPART_ENDPOINTS = frozenset({"edits", "variations"})
_GENERATIONS = "generations"
# OpenAI's limits.
MAX_PICTURES = 10
MAX_PARTIAL_IMAGES = 3
MAX_PROMPT_CHARS = 32_000
# A picture's output tokens by quality, for its largest size (1536x1024 and 1024x1536
# cost about 1.5x a square one): what the quota reserves per picture. ``auto`` and a
# quality OpenAI adds later are reserved as ``high``: the provider picks, and a reserve
# too small would let a budget pay for less than it gets.
_PICTURE_TOKENS = {"low": 408, "medium": 1_584, "high": 6_240}
_SQUARE_PICTURE_TOKENS = {"low": 272, "medium": 1_056, "high": 4_160}
_SQUARE = "1024x1024"
_MOST = "high"


def refuse_unserved_path(path: str, prefix_route: bool) -> None:
    """Refuse an Images API path the gateway does not serve: an edit or a variation
    (multipart/form-data) with a 400 naming the endpoint it serves; under a prefix route,
    any other path than a generation's with a 404."""
    last = path.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]
    if last in MULTIPART_ENDPOINTS:
        raise BadRequestError(
            f"image {last} (POST {path.partition('?')[0]}) take multipart/form-data, which "
            "this gateway does not serve; it serves image generations "
            "(POST /v1/images/generations)",
            code="unsupported_endpoint",
        )
    if prefix_route and last != _GENERATIONS:
        raise NotFoundError(
            f"no Images API endpoint at {path.partition('?')[0]}; image generations are "
            "served at /v1/images/generations",
            code="route_not_found",
        )


def check_images_body(body: dict[str, Any]) -> None:
    """Refuse a body whose ``prompt``, ``n``, ``quality``, ``size``, ``stream`` or
    ``partial_images`` is not valid (``model``: stages.chat_request, as for every API)."""
    if "messages" in body or "input" in body:
        named = "messages" if "messages" in body else "input"
        raise BadRequestError(
            f"this is an image generation route: send 'prompt', not '{named}' "
            "(chat completions are served on /v1/chat/completions)",
            param=named,
        )
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequestError("'prompt' must be a non-empty string", param="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequestError(
            f"'prompt' is {len(prompt)} characters, more than the {MAX_PROMPT_CHARS} allowed",
            param="prompt",
        )
    _check_count(body, "n", 1, MAX_PICTURES)
    _check_count(body, "partial_images", 0, MAX_PARTIAL_IMAGES)
    for name in ("quality", "size"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise BadRequestError(f"'{name}' must be a string", param=name)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequestError("'stream' must be a boolean", param="stream")


def _check_count(body: dict[str, Any], name: str, least: int, most: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= most:
        raise BadRequestError(f"'{name}' must be an integer from {least} to {most}", param=name)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt's tokens, one per four characters as for chat prompts; the provider's
    count settles it."""
    prompt = body.get("prompt")
    text = prompt if isinstance(prompt, str) else ""
    return max(-(-len(text) // CHARS_PER_TOKEN), 1)


def picture_allowance(body: dict[str, Any]) -> int:
    """The output tokens the quota reserves for the body's pictures: ``n`` of them, each
    at its quality's count for its size (a quality the provider chooses, ``auto`` or
    none, at the highest)."""
    n = body.get("n")
    pictures = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    quality = body.get("quality")
    chosen = quality if isinstance(quality, str) and quality in _PICTURE_TOKENS else _MOST
    table = _SQUARE_PICTURE_TOKENS if body.get("size") == _SQUARE else _PICTURE_TOKENS
    return pictures * table[chosen]

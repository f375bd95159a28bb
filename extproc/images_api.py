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

An image edit (``POST /v1/images/edits``) sends the same text fields with the pictures to
edit (``image``, or ``image[]`` for several, and an optional ``mask``) as
``multipart/form-data``. The gateway reads the form's text fields
(``multipart_form.read_form``: the files are located, never copied), checks them as a
generation's body (``edit_body``: ``n``, ``partial_images`` and ``stream`` come as text
and are read as numbers and booleans first), and requires a picture. The quota reserves
the pictures to draw as for a generation and an estimate of the given pictures' input
tokens (``input_image_tokens``); the answer's ``usage`` settles both. The form goes
upstream as the client sent it, a text field spliced only where the gateway changes it
(the provider's name for the model, a prompt a guard masked).

Image variations (``/v1/images/variations``) are refused with a 400 naming the endpoints
served (``refuse_unserved_path``): only dall-e-2 makes them, a deprecated model whose
answers carry no ``usage``, so the gateway could bill nothing it measured.
"""

from __future__ import annotations

from typing import Any

from extproc.errors import BadRequestError, NotFoundError
from extproc.multipart_form import INVALID_MULTIPART, FormFile, MultipartForm, shown
from extproc.quota.estimate import CHARS_PER_TOKEN

# Under the provider's API path (``/v1`` for OpenAI).
GENERATIONS_ENDPOINT = "/images/generations"
EDITS_ENDPOINT = "/images/edits"
_GENERATIONS = "generations"
_EDITS = "edits"
_SERVED = frozenset({_GENERATIONS, _EDITS})
# Only dall-e-2 makes variations, and bills them by the picture with no usage.
_REFUSED = "variations"
# The form's file fields that hold pictures to edit (``image[]`` when several).
_PICTURE_FIELDS = frozenset({"image", "image[]"})
# Every file field an edit has: its pictures and the mask. A file under any other name
# (a ``prompt`` or ``model`` sent as a file beside the text one) would reach the
# provider unread by the guards, the routing and the quota: refused.
_FILE_FIELDS = _PICTURE_FIELDS | {"mask"}
# The form's text fields the checks read as numbers and booleans.
_INTEGER_FIELDS = ("n", "partial_images")
_BOOLEANS = {"true": True, "false": False}
# The most file field names a refusal names.
_MOST_NAMED = 5
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
# The input tokens the quota reserves per picture to edit: OpenAI counts a picture's
# input as a vision model does, 1,105 tokens at most for a 1536x1024 one (85 plus 170 per
# 512-pixel tile); ``input_fidelity: high`` adds the picture's own tokens at high quality
# (6,240 at most). An estimate: the answer's usage settles it.
_INPUT_PICTURE_TOKENS = 1_105
_HIGH_FIDELITY_EXTRA = _PICTURE_TOKENS["high"]


def is_edit(path: str) -> bool:
    """Whether ``path`` asks for an image edit (``.../images/edits``)."""
    return _last_segment(path) == _EDITS


def _last_segment(path: str) -> str:
    return path.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]


def refuse_unserved_path(path: str, prefix_route: bool) -> None:
    """Refuse an Images API path the gateway does not serve: a variation with a 400
    naming the endpoints it serves; under a prefix route, any other path than a
    generation's or an edit's with a 404."""
    last = _last_segment(path)
    if last == _REFUSED:
        raise BadRequestError(
            f"image variations (POST {path.partition('?')[0]}) are not served: only the "
            "deprecated dall-e-2 makes them, and its answers report no usage to bill; "
            "this gateway serves image generations (POST /v1/images/generations) and "
            "edits (POST /v1/images/edits)",
            code="unsupported_endpoint",
        )
    if prefix_route and last not in _SERVED:
        raise NotFoundError(
            f"no Images API endpoint at {path.partition('?')[0]}; image generations are "
            "served at /v1/images/generations and edits at /v1/images/edits",
            code="route_not_found",
        )


def edit_body(form: MultipartForm) -> dict[str, Any]:
    """An edit form's text fields as the body the gateway checks, counts and guards (a
    generation's shape: ``n`` and ``partial_images`` integers, ``stream`` a boolean
    where their text reads so; left as text otherwise, for ``check_images_body`` to
    refuse by name); a 400 for a form with no picture to edit or a file outside the
    picture fields."""
    body: dict[str, Any] = dict(form.fields)
    for name in _INTEGER_FIELDS:
        value = body.get(name)
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            body[name] = int(value.strip())
    stream = body.get("stream")
    if isinstance(stream, str) and stream.strip().lower() in _BOOLEANS:
        body["stream"] = _BOOLEANS[stream.strip().lower()]
    refuse_stray_files(form)
    if not pictures_to_edit(form):
        names = sorted({shown(part.name) for part in form.files})
        named = ", ".join(names[:_MOST_NAMED]) + (", ..." if len(names) > _MOST_NAMED else "")
        raise BadRequestError(
            "an image edit needs a picture to edit: a file in the form's 'image' field "
            f"('image[]' for several); the form's files: {named or 'none'}",
            param="image",
        )
    check_images_body(body)
    return body


def refuse_stray_files(form: MultipartForm) -> None:
    """A 400 for a file part outside the picture fields: the gateway reads, guards and
    counts the text fields alone, so a text field's name on a file (``prompt``,
    ``model``, ``n``) would carry to the provider what no check saw, and which of the
    two it reads would be a guess."""
    for part in form.files:
        if part.name not in _FILE_FIELDS:
            quoted = shown(part.name)
            raise BadRequestError(
                f"the form has a file in its field '{quoted}'; an image edit's files go "
                "in 'image', 'image[]' or 'mask', and its other fields are text",
                param=quoted,
                code=INVALID_MULTIPART,
            )


def pictures_to_edit(form: MultipartForm) -> list[FormFile]:
    """The form's pictures to edit (``image``, ``image[]``; not the mask), in order."""
    return [part for part in form.files if part.name in _PICTURE_FIELDS]


def input_image_tokens(form: MultipartForm, body: dict[str, Any]) -> int:
    """The input tokens the quota reserves for an edit's pictures (the constants above
    say how much each; the provider's count settles it)."""
    pictures = len(pictures_to_edit(form))
    each = _INPUT_PICTURE_TOKENS
    if body.get("input_fidelity") == "high":
        each += _HIGH_FIDELITY_EXTRA
    return pictures * each


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
    pictures = pictures_asked(body)
    quality = body.get("quality")
    chosen = quality if isinstance(quality, str) and quality in _PICTURE_TOKENS else _MOST
    table = _SQUARE_PICTURE_TOKENS if body.get("size") == _SQUARE else _PICTURE_TOKENS
    return pictures * table[chosen]


def pictures_asked(body: dict[str, Any]) -> int:
    """The pictures the body asks for: ``n``, 1 when it names none (OpenAI's default)."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1

"""The mock's moderation endpoint (``POST .../moderations``), deterministic by trigger words.

Answers in OpenAI's shape: one result per input (a string or an array of
strings), each with ``flagged``, ``categories`` and ``category_scores`` over
OpenAI's category names. A category scores the highest weight of its trigger
words found in the text (whole words, any case), else 0.0001; it is flagged
at 0.5 and above. The words:

==========================  =====================  ======
category                    words                  weight
==========================  =====================  ======
harassment                  stupid, idiot, moron   0.91
harassment/threatening      threaten               0.72
hate                        hateful                0.83
violence                    kill, attack           0.88
violence/graphic            gore                   0.66
self-harm                   selfharm               0.77
sexual                      explicit               0.61
illicit                     steal, hack            0.45
illicit/violent             bomb                   0.93
==========================  =====================  ======

``illicit`` stays under 0.5 on purpose: a threshold below it rejects, the
provider's own flag does not, so tests can tell the two rules apart.

Images, as the omni models take them: ``input`` an array of ``{"type": "text", "text"}``
and ``{"type": "image_url", "image_url": {"url"}}`` items gets one result for all of
them, and at most one image (two are refused, as OpenAI refuses them: a 400
``too_many_images``). An image is read for the same words, in its URL and, for a base64
data URL, in its decoded bytes (so a test flags an image by the word it puts in it), and
only for the categories OpenAI reads in images (violence, violence/graphic, the self-harm
ones, sexual); the others score 0 for it. Each result's ``category_applied_input_types``
names the kinds of input each category was read in, as OpenAI's do. An image URL holding
``unfetchable``, or a data URL that is not base64, is refused with a 400
``invalid_image_url``, the mock's stand-in for an image the service cannot download.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson
from aiohttp import web

from extproc.config.moderation_categories import OPENAI_CATEGORIES
from extproc.mock_llm.openai_api import error_response
from extproc.mock_llm.recorder import Body

# OpenAI's categories, the list the config's thresholds are checked against.
CATEGORIES = OPENAI_CATEGORIES
TRIGGERS: dict[str, tuple[str, float]] = {
    "stupid": ("harassment", 0.91),
    "idiot": ("harassment", 0.91),
    "moron": ("harassment", 0.91),
    "threaten": ("harassment/threatening", 0.72),
    "hateful": ("hate", 0.83),
    "kill": ("violence", 0.88),
    "attack": ("violence", 0.88),
    "gore": ("violence/graphic", 0.66),
    "selfharm": ("self-harm", 0.77),
    "explicit": ("sexual", 0.61),
    "steal": ("illicit", 0.45),
    "hack": ("illicit", 0.45),
    "bomb": ("illicit/violent", 0.93),
}
# The categories OpenAI's omni models read in images; the rest are text only.
IMAGE_CATEGORIES = frozenset(
    (
        "violence",
        "violence/graphic",
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual",
    )
)
FLAG_AT = 0.5
BASELINE = 0.0001
_WORD = re.compile(r"[a-z]+")


def moderate(text: str, images: tuple[str, ...] = (), *, texts: bool = True) -> dict[str, Any]:
    """One input's result: ``text`` (the text items of a multimodal input, joined) and
    the ``images`` read (their URLs or decoded bytes); ``texts``: whether any text was."""
    scores = dict.fromkeys(CATEGORIES, BASELINE if texts else 0.0)
    for category in IMAGE_CATEGORIES if images else ():
        scores[category] = BASELINE
    _score(scores, text, CATEGORIES)
    for image in images:
        _score(scores, image, IMAGE_CATEGORIES)
    flags = {category: score >= FLAG_AT for category, score in scores.items()}
    applied = {
        category: [
            *(["text"] if texts else []),
            *(["image"] if images and category in IMAGE_CATEGORIES else []),
        ]
        for category in CATEGORIES
    }
    return {
        "flagged": any(flags.values()),
        "categories": flags,
        "category_scores": scores,
        "category_applied_input_types": applied,
    }


def _score(scores: dict[str, float], text: str, read: frozenset[str] | tuple[str, ...]) -> None:
    for word in _WORD.findall(text.lower()):
        found = TRIGGERS.get(word)
        if found is not None and found[0] in read:
            category, weight = found
            scores[category] = max(scores[category], weight)


class _RefusedError(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _multimodal(items: list[Any]) -> dict[str, Any]:
    """One result for an array of text and image items."""
    texts = [i["text"] for i in items if i.get("type") == "text" and isinstance(i.get("text"), str)]
    urls = [
        i["image_url"].get("url")
        for i in items
        if i.get("type") == "image_url" and isinstance(i.get("image_url"), dict)
    ]
    if len(texts) + len(urls) != len(items) or not all(isinstance(u, str) for u in urls):
        odd = "Each input item must be a text or an image_url item."
        raise _RefusedError(odd, "invalid_value")
    if len(urls) > 1:
        many = f"Number of images ({len(urls)}) exceeds maximum of 1"
        raise _RefusedError(many, "too_many_images")
    return moderate(" ".join(texts), tuple(_image(url) for url in urls), texts=bool(texts))


def _image(url: str) -> str:
    """What the mock reads in an image: its URL, and a data URL's decoded bytes."""
    if "unfetchable" in url:
        raise _RefusedError("Failed to download the image.", "invalid_image_url")
    if not url.startswith("data:"):
        return url
    _, _, data = url.partition(";base64,")
    try:
        return base64.b64decode(data, validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        raise _RefusedError("The image data is not valid base64.", "invalid_image_url") from None


async def moderations(request: web.Request, body: Body) -> web.StreamResponse:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return error_response(401, "You didn't provide an API key.", code="invalid_api_key")
    doc = body.json if body.is_json else None
    texts = doc.get("input") if isinstance(doc, dict) else None
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, list) and texts and all(isinstance(t, dict) for t in texts):
        try:
            results = [_multimodal(texts)]
        except _RefusedError as refused:
            return error_response(400, str(refused), param="input", code=refused.code)
    elif isinstance(texts, list) and all(isinstance(t, str) for t in texts):
        results = [moderate(text) for text in texts]
    else:
        return error_response(
            400,
            "'input' must be a string, an array of strings or an array of input items.",
            param="input",
        )
    model = doc.get("model") if isinstance(doc, dict) else None
    answer = {
        "id": "modr-mock",
        "model": model if isinstance(model, str) else "omni-moderation-latest",
        "results": results,
    }
    return web.Response(body=orjson.dumps(answer), headers={"Content-Type": "application/json"})

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
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.openai_api import error_response
from extproc.mock_llm.recorder import Body

CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
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
FLAG_AT = 0.5
BASELINE = 0.0001
_WORD = re.compile(r"[a-z]+")


def moderate(text: str) -> dict[str, Any]:
    """One input's result."""
    scores = dict.fromkeys(CATEGORIES, BASELINE)
    for word in _WORD.findall(text.lower()):
        found = TRIGGERS.get(word)
        if found is not None:
            category, weight = found
            scores[category] = max(scores[category], weight)
    flags = {category: score >= FLAG_AT for category, score in scores.items()}
    return {"flagged": any(flags.values()), "categories": flags, "category_scores": scores}


async def moderations(request: web.Request, body: Body) -> web.StreamResponse:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return error_response(401, "You didn't provide an API key.", code="invalid_api_key")
    doc = body.json if body.is_json else None
    texts = doc.get("input") if isinstance(doc, dict) else None
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return error_response(
            400, "'input' must be a string or an array of strings.", param="input"
        )
    model = doc.get("model") if isinstance(doc, dict) else None
    answer = {
        "id": "modr-mock",
        "model": model if isinstance(model, str) else "omni-moderation-latest",
        "results": [moderate(text) for text in texts],
    }
    return web.Response(body=orjson.dumps(answer), headers={"Content-Type": "application/json"})

"""The text an embeddings request sends: each string of its ``input``; and a rerank
request's, its ``query`` and documents (``rerank_slots``).

Request guards read, mask and refuse it as they do a chat message's content, with the
role ``user``: webhooks get one user message per string, moderation reads them when
its ``roles`` include ``user``. Token ids are not text and are not read. A ``title``
(Vertex AI's title of the documents embedded, which goes to Vertex with each text) is
the client's text too, read after the input.
"""

from __future__ import annotations

from typing import Any

from extproc.guardrails.content import TextSlot

ROLE = "user"


def input_slots(body: dict[str, Any]) -> list[TextSlot]:
    """Each string of an embeddings request's ``input``, in order, then its ``title``."""
    title = [TextSlot(ROLE, body, "title")] if isinstance(body.get("title"), str) else []
    value = body.get("input")
    if isinstance(value, str):
        return [TextSlot(ROLE, body, "input"), *title]
    if not isinstance(value, list):
        return title
    texts = [TextSlot(ROLE, value, i) for i, item in enumerate(value) if isinstance(item, str)]
    return [*texts, *title]


def rerank_slots(body: dict[str, Any]) -> list[TextSlot]:
    """A rerank request's text, read as an embeddings input is: its ``query``, then each
    document's text (a string, or an object's ``text``), in order."""
    slots = [TextSlot(ROLE, body, "query")] if isinstance(body.get("query"), str) else []
    documents = body.get("documents")
    if not isinstance(documents, list):
        return slots
    for index, document in enumerate(documents):
        if isinstance(document, str):
            slots.append(TextSlot(ROLE, documents, index))
        elif isinstance(document, dict) and isinstance(document.get("text"), str):
            slots.append(TextSlot(ROLE, document, "text"))
    return slots

"""A request's metadata and end-user identifiers, as guard slots.

The model never reads them, but the provider stores them: OpenAI keeps a request's
``metadata`` with a stored completion or response (shown in its dashboard, listed by its
API) and ``user`` / ``safety_identifier`` for abuse checks, and uses ``prompt_cache_key`` to
route its cache; Anthropic keeps ``metadata.user_id``; Bedrock writes a Converse call's
``requestMetadata`` into the account's invocation logs; Vertex AI bills by a request's
``labels``. Guards are there to keep data from the provider, so a key or an address put
there (an app that sets ``user`` to the user's e-mail address) must meet them as the prompt
does. They are the developer's settings, read with the role ``system`` as tool definitions
are (``definitions``).

How a mask writes there follows what the field is for:

- an OpenAI ``metadata`` value is a free tag (any string of up to 512 characters): masked in
  place, the tag says data was hidden, as a masked prompt does;
- an end user's identifier (``user``, ``safety_identifier``, Anthropic's
  ``metadata.user_id``) and a prompt cache key are ``removable``: a mask takes the field out
  of the body, and the request goes on as one that named no end user (no cache key), which
  every provider takes. No replacement fits them: one alike for every user would make the
  provider's abuse checks treat them all as one user (and share one cache between callers),
  and a hash of an e-mail address is a pseudonym anyone can guess back;
- what must keep its spelling or a provider's alphabet is read ``fixed`` (a mask refuses
  the request, naming it): a metadata key is a name; Bedrock's ``requestMetadata`` and
  Vertex's ``labels`` take a few characters only (no ``<``, ``>`` or ``*``), so Bedrock and
  Google would refuse a masked value.

Only what reaches a provider is read (``openai_carried_slots``): an OpenAI request the
gateway translates carries none of these fields to Bedrock (Converse, Titan's and Cohere's
embeddings) or to Vertex AI's text embeddings, and to Claude (on Anthropic or Vertex AI)
only the end user's identifier; a guard reading the others refused a request for text no
provider would get. Which pair carries what is ``backends.openai_metadata_carried``.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from extproc.guardrails.content import TextSlot

ROLE = "system"

METADATA_KEY = "a metadata key"
METADATA_VALUE = "a metadata value"
LABEL = "a label"

# OpenAI's identifiers of the end user and its cache key, on every OpenAI API.
_IDENTIFIERS = ("user", "safety_identifier", "prompt_cache_key")
# Vertex AI's request labels (one spelling in both of Google's casings).
_LABELS = ("labels",)


def openai_slots(body: dict[str, Any]) -> list[TextSlot]:
    """An OpenAI request's (chat, Responses, embeddings, completions) ``metadata`` and
    identifiers."""
    slots: list[TextSlot] = []
    _map_slots(body.get("metadata"), slots, values=None)
    for field in _IDENTIFIERS:
        _removable(body, field, slots)
    return slots


class Carried(Enum):
    """What of an OpenAI request's ``metadata`` and identifiers one provider gets."""

    # The body as OpenAI's (OpenAI-compatible providers, Gemini at Vertex AI's
    # OpenAI-compatible endpoint): every field.
    ALL = "all"
    # Anthropic's Messages body (Claude on Anthropic or Vertex AI): the end user's
    # identifier alone, as ``metadata.user_id``.
    END_USER = "end_user"
    # A body with no place for any (Bedrock's Converse, Titan's and Cohere's embeddings,
    # Vertex AI's text embeddings).
    NOTHING = "nothing"


def openai_carried_slots(body: dict[str, Any], carried: frozenset[Carried]) -> list[TextSlot]:
    """The fields of ``openai_slots`` that reach a provider, ``carried`` saying what each of
    those the request may go to (its own, its failover chain's) gets: all when any takes
    the body as OpenAI's (or none is known); else the end user's identifiers Claude gets
    as ``metadata.user_id`` (``user``, or ``safety_identifier`` in its absence, as
    ``translators.openai_anthropic`` picks it); else nothing."""
    if not carried or Carried.ALL in carried:
        return openai_slots(body)
    slots: list[TextSlot] = []
    if Carried.END_USER in carried:
        # Both: the translator sends ``user``, or ``safety_identifier`` in its absence, so
        # once a mask removed ``user`` the other is what Claude gets.
        for field in ("user", "safety_identifier"):
            _removable(body, field, slots)
    return slots


def anthropic_slots(body: dict[str, Any]) -> list[TextSlot]:
    """An Anthropic Messages body's ``metadata.user_id`` (its only member)."""
    slots: list[TextSlot] = []
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        # Without its one member, ``metadata`` goes too: the body is then the one a client
        # naming no end user sends.
        _removable(metadata, "user_id", slots, outer=(body, "metadata"))
    return slots


def converse_slots(body: dict[str, Any]) -> list[TextSlot]:
    """A Converse call's ``requestMetadata``: keys and values, written to its logs."""
    slots: list[TextSlot] = []
    _map_slots(body.get("requestMetadata"), slots, values=METADATA_VALUE)
    return slots


def gemini_slots(body: dict[str, Any]) -> list[TextSlot]:
    """A Gemini request's ``labels`` (Vertex AI's billing labels)."""
    slots: list[TextSlot] = []
    for name in _LABELS:
        _map_slots(body.get(name), slots, values=LABEL, keys=LABEL)
    return slots


def _map_slots(
    mapping: Any, slots: list[TextSlot], *, values: str | None, keys: str = METADATA_KEY
) -> None:
    """A map of strings: each key read ``fixed`` as ``keys`` (a name: never renamed), each
    string value read, ``fixed`` as ``values`` says (None: masked in place)."""
    if not isinstance(mapping, dict):
        return
    names = list(mapping)
    for index, name in enumerate(names):
        if isinstance(name, str):
            slots.append(TextSlot(ROLE, names, index, fixed=keys))
        if isinstance(mapping[name], str):
            slots.append(TextSlot(ROLE, mapping, name, fixed=values))


def _removable(
    holder: dict[str, Any],
    field: str,
    slots: list[TextSlot],
    outer: tuple[dict[str, Any], str] | None = None,
) -> None:
    if isinstance(holder.get(field), str):
        slots.append(TextSlot(ROLE, holder, field, removable=True, outer=outer))

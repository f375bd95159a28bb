"""What the gateway reads of an InvokeModel body, whichever model family wrote it.

InvokeModel takes each model family's own body. The gateway reads Claude's whole (it is
Anthropic's Messages API: guarded, enriched, estimated and capped as ``/v1/messages``
is). Any other family's body passes through unread but for what the quota needs:

- its prompt estimate (``estimate_prompt_tokens``): every string in the body, at
  ``CHARS_PER_TOKEN`` characters a token, which covers the prompt wherever the family
  puts it (Llama's and Mistral's ``prompt``, Titan's ``inputText``, Nova's and
  Cohere's messages) and over-counts by its few string settings; a string of base64
  (an image's bytes) is no text and counts nothing, as on every other API;
- its completion allowance, where the family names one the gateway knows
  (``ALLOWANCE_FIELDS``: Llama's ``max_gen_len``, Mistral's and Cohere Command's
  ``max_tokens``, Titan's ``textGenerationConfig.maxTokenCount``, Nova's
  ``inferenceConfig.maxTokens`` or ``max_new_tokens``, gpt-oss's
  ``max_completion_tokens`` or ``max_tokens``, DeepSeek-R1's, AI21 Jamba's and Writer
  Palmyra's ``max_tokens``), once for each answer the body asks for (``choices``:
  Cohere Command's ``num_generations``, Jamba's ``n``), which a hard cap lowers where
  the client wrote it (never raising it: Titan's and Jamba's 0 stays 0); a
  body naming none reserves what its model generates by default (``MODEL_DEFAULTS``,
  at most ``quotas.default_max_tokens``), else ``quotas.default_max_tokens``, and a
  hard cap writes the family's own name into it only when the room left is below what
  the model would generate by default; another family's allowance is
  ``quotas.default_max_tokens``, which a hard cap cannot write (it is admitted only
  with room for all of it, as a compaction).

The answer is billed by the counts Bedrock reports for every model, not by the body
(``translators.bedrock_invoke``). An embeddings model (its ``kind`` in the config, else
a model id that names Titan's, Cohere's or Nova's embeddings, ``names_embeddings_model``)
generates nothing: no completion is reserved, and its operation is ``embeddings``.

Which body is Claude's (``reads_as_claude``): a model id that names its model says; an
ARN that hides it (an application inference profile) says nothing, so the body does:
Claude's alone carries ``anthropic_version``, which Bedrock requires of it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from extproc.config.model import ModelKind, RouteApi
from extproc.providers.bedrock_model_ids import base_model_id
from extproc.quota.estimate import CHARS_PER_TOKEN

if TYPE_CHECKING:
    from extproc.context import RequestContext

# Where each family the gateway knows bounds its completion: the model id's prefix, and
# the paths in the body that bound it. A family with two names takes either (Nova's
# first pages wrote ``max_new_tokens``, its later ones ``maxTokens``; gpt-oss's body is
# OpenAI's chat body); the first is the one a hard cap writes into a body that names
# none. A prefix is one body: Cohere's Command R and its older Command take different
# bodies, and Nova's image, video and speech models are no Nova text body at all.
_MAX_TOKENS: tuple[tuple[str, ...], ...] = (("max_tokens",),)
_TITAN = ("textGenerationConfig", "maxTokenCount")
_NOVA = (("inferenceConfig", "maxTokens"), ("inferenceConfig", "max_new_tokens"))
_OPENAI_CHAT = (("max_completion_tokens",), ("max_tokens",))
ALLOWANCE_FIELDS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("meta.llama", (("max_gen_len",),)),
    ("mistral.", _MAX_TOKENS),
    ("amazon.titan-text", (_TITAN,)),
    ("amazon.nova-micro", _NOVA),
    ("amazon.nova-lite", _NOVA),
    ("amazon.nova-pro", _NOVA),
    ("amazon.nova-premier", _NOVA),
    ("amazon.nova-2-lite", _NOVA),
    ("amazon.nova-2-pro", _NOVA),
    ("cohere.command-r", _MAX_TOKENS),
    ("cohere.command-text", _MAX_TOKENS),
    ("cohere.command-light-text", _MAX_TOKENS),
    ("openai.gpt-oss", _OPENAI_CHAT),
    ("deepseek.r1", _MAX_TOKENS),
    ("ai21.jamba", _MAX_TOKENS),
    ("writer.palmyra", _MAX_TOKENS),
)
# Titan Text takes a maxTokenCount of 0 (an answer of nothing), and AI21 Jamba a
# max_tokens of 0; every other family's least is 1, and Bedrock refuses a 0 there.
_ZERO_TAKEN = ("amazon.titan-text", "ai21.jamba")
# Where a family asks for several answers to one prompt, each of its allowance: Cohere
# Command's ``num_generations`` (up to 5), AI21 Jamba's ``n`` (up to 16). The model
# generates, and Bedrock bills, each of them.
CHOICE_FIELDS: tuple[tuple[str, str], ...] = (
    ("cohere.command-text", "num_generations"),
    ("cohere.command-light-text", "num_generations"),
    ("ai21.jamba", "n"),
)
# What a model generates at the most when its body names no limit, as Bedrock's
# model-parameter pages give it (model id prefix, tokens). A body naming none reserves
# this (never more than quotas.default_max_tokens), and a hard cap leaves it alone while
# the budget has room for it: written in, the cap's default allowance RAISED a Llama's
# 512 to 1,024, and a Cohere Command's 20 to 1,024, billed and charged to the budget.
# The families whose pages name no default (Nova, Cohere Command R, Mistral Large 2,
# gpt-oss, DeepSeek) are not listed: they reserve quotas.default_max_tokens, which a
# hard cap writes in to bound an answer the gateway cannot otherwise bound.
MODEL_DEFAULTS: tuple[tuple[str, int], ...] = (
    ("meta.llama", 512),
    ("amazon.titan-text", 512),
    ("mistral.mistral-7b-instruct", 512),
    ("mistral.mixtral-8x7b-instruct", 512),
    ("mistral.mistral-small-2402", 8192),
    ("mistral.mistral-large-2402", 8192),
    ("cohere.command-text", 20),
    ("cohere.command-light-text", 20),
    ("ai21.jamba", 4096),
    ("writer.palmyra", 16),
)
# Mistral's models on Bedrock take two bodies: the text completion's ``prompt`` and the
# chat completion's ``messages``, and each model only those its page lists (Mistral
# Large 24.02 both; Mistral Large 2, 24.07, only ``messages``). A body goes to a
# fallback that takes its kind; a Mistral model not listed here (Pixtral Large and
# the later ones) takes its own body alone, as a family the gateway does not know.
_PROMPT_BODY = frozenset({"prompt"})
_MESSAGES_BODY = frozenset({"messages"})
MISTRAL_BODIES: tuple[tuple[str, frozenset[str]], ...] = (
    ("mistral.mistral-7b-instruct", _PROMPT_BODY),
    ("mistral.mixtral-8x7b-instruct", _PROMPT_BODY),
    ("mistral.mistral-small-2402", _PROMPT_BODY),
    ("mistral.mistral-large-2402", _PROMPT_BODY | _MESSAGES_BODY),
    ("mistral.mistral-large-2407", _MESSAGES_BODY),
)
_MISTRAL = "mistral."
_CLAUDE = "anthropic."
# The embeddings families Bedrock serves through InvokeModel: their answer is vectors,
# billed by the input count alone (Titan's and Cohere's text and multimodal models).
# ``/v1/embeddings`` translates to these bodies (``EMBEDDINGS_PREFIXES``); Nova's
# multimodal embeddings take a body of their own, which InvokeModel's clients write.
EMBEDDINGS_PREFIXES = ("amazon.titan-embed", "cohere.embed")
_INVOKE_EMBEDDINGS_PREFIXES = (*EMBEDDINGS_PREFIXES, "amazon.nova-2-multimodal-embeddings")
_CLAUDE_VERSION_KEY = "anthropic_version"
# A string that is all base64 (an image's or a document's bytes: Llama's ``images``,
# Nova's ``source.bytes``, Titan's ``inputImage``; a data URL) is no text: its length is
# not its token count, and read as text one photo would reserve tens of thousands of
# tokens (``quota.estimate`` counts no image either). Text has spaces or punctuation;
# bytes' base64 mixes capitals, small letters and digits.
_LEAST_BINARY = 256
_BINARY = re.compile(
    r"(?=[^A-Z]*[A-Z])(?=[^a-z]*[a-z])(?=[^0-9]*[0-9])"
    r"(?:data:[\w.+/-]+(?:;[\w=.+-]+)*,)?[A-Za-z0-9+/_-]+={0,2}"
)


def reads_as_claude(model_id: str, body: dict[str, Any]) -> bool:
    """Whether an InvokeModel body for ``model_id`` is Claude's (module docstring)."""
    named = base_model_id(model_id)
    if named.startswith("arn:"):
        return _CLAUDE_VERSION_KEY in body
    return named.startswith(_CLAUDE)


def body_family(model_id: str) -> str | None:
    """The InvokeModel body family of a model that is not Claude, for failover: the
    prefix of a family the gateway knows (``ALLOWANCE_FIELDS``, ``EMBEDDINGS_PREFIXES``;
    Mistral's models listed in ``MISTRAL_BODIES``, whose bodies ``takes_body`` then
    tells apart), else the model itself; None for an ARN that hides its model."""
    named = base_model_id(model_id)
    if named.startswith("arn:"):
        return None
    if named.startswith(_MISTRAL) and _mistral_bodies(named) is None:
        return named
    known = (*(prefix for prefix, _ in ALLOWANCE_FIELDS), *EMBEDDINGS_PREFIXES)
    return next((prefix for prefix in known if named.startswith(prefix)), named)


def takes_body(model_id: str, body: dict[str, Any]) -> bool:
    """Whether ``model_id`` takes ``body``'s kind within its family (``body_family``): a
    Mistral model the body's ``prompt`` or ``messages`` (Bedrock refuses the other
    kind); any other model every body of its family."""
    taken = _mistral_bodies(base_model_id(model_id))
    if taken is None:
        return True
    return _PROMPT_BODY.union(_MESSAGES_BODY).intersection(body) <= taken


def _mistral_bodies(named: str) -> frozenset[str] | None:
    return next((taken for prefix, taken in MISTRAL_BODIES if named.startswith(prefix)), None)


def invokes_embeddings(ctx: RequestContext) -> bool:
    """Whether ``ctx`` is an InvokeModel call to an embeddings model: its ``kind`` in the
    config when it has one, else its model id (``names_embeddings_model``), so a catch-all
    Bedrock Runtime route tells Titan's and Cohere's embeddings from chats too."""
    route = ctx.route
    if route is None or route.api is not RouteApi.BEDROCK_INVOKE:
        return False
    model = ctx.model or ""
    kind = ctx.runtime.model_kind.get(ctx.runtime.canonical_model.get(model, model))
    if kind is not None:
        return kind is ModelKind.EMBEDDINGS
    return names_embeddings_model(ctx.upstream_model or "")


def names_embeddings_model(model_id: str) -> bool:
    """Whether ``model_id`` names an embeddings model (Titan's, Cohere's, Nova's); an
    ARN that hides its model says no: its ``kind`` in the config says."""
    return base_model_id(model_id).startswith(_INVOKE_EMBEDDINGS_PREFIXES)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Another family's prompt, as the quota reserves it: all the body's text."""
    return _string_chars(body) // CHARS_PER_TOKEN


def _string_chars(value: Any) -> int:
    if isinstance(value, str):
        return 0 if len(value) >= _LEAST_BINARY and _BINARY.fullmatch(value) else len(value)
    if isinstance(value, dict):
        return sum(_string_chars(item) for item in value.values())
    if isinstance(value, list):
        return sum(_string_chars(item) for item in value)
    return 0


def allowance_paths(model_id: str) -> tuple[tuple[str, ...], ...] | None:
    """The paths that bound the completion in ``model_id``'s family's body, the one a
    hard cap writes first; None for a family the gateway does not know."""
    named = base_model_id(model_id)
    for prefix, paths in ALLOWANCE_FIELDS:
        if named.startswith(prefix):
            return paths
    return None


def model_default(model_id: str) -> int | None:
    """What ``model_id`` generates at the most when its body names no limit
    (``MODEL_DEFAULTS``); None when its family's page names no default."""
    named = base_model_id(model_id)
    return next((most for prefix, most in MODEL_DEFAULTS if named.startswith(prefix)), None)


def completion_allowance(model_id: str, body: dict[str, Any], default_max_tokens: int) -> int:
    """The most the answer may take: the family's allowance, else what the model
    generates by default, never more than ``default_max_tokens`` (the operator's bound
    on an answer nobody bounded), else that default. A body naming two (Nova's
    ``maxTokens`` and ``max_new_tokens``) reserves the larger: which one the model keeps
    is its own affair, and the reservation covers either."""
    least = _least_allowance(model_id)
    named = [_read(body, path) for path in allowance_paths(model_id) or ()]
    counts: list[int] = [value for value in named if _is_count(value, least)]
    if counts:
        return max(counts)
    own = model_default(model_id)
    return default_max_tokens if own is None else min(own, default_max_tokens)


def cap_completion(model_ids: Sequence[str], body: dict[str, Any], most: int) -> bool:
    """Lower the allowance of the family of ``model_ids`` (the model the request names,
    and any failover member its body may go to, all of one family) to ``most``; whether
    the body changed. Each field the client wrote is lowered where it stands (one that is
    no count is replaced); a body naming none gets the family's own, never a second name
    beside the client's, which a provider may refuse (a null is none), and only when
    ``most`` is below what one of the models generates by default: a cap never raises
    a model's default, and a body that fits goes as the client wrote it. False for a
    family without a known field: nothing to lower."""
    paths = allowance_paths(model_ids[0]) if model_ids else None
    if paths is None:
        return False
    least = _least_allowance(model_ids[0])
    changed = False
    # A null is the client's "unset" (OpenAI's meaning): no allowance sent, left as it is.
    sent = [path for path in paths if _read(body, path) is not None]
    if not sent and _defaults_fit(model_ids, most):
        return False
    for path in sent or paths[:1]:
        *_, name = path
        holder = _holder(body, path)
        value: Any = holder.get(name)
        # Never raised: a Titan answer of 0 tokens stays one.
        if not (_is_count(value, least) and value <= most):
            holder[name] = most
            changed = True
    return changed


def _defaults_fit(model_ids: Sequence[str], most: int) -> bool:
    """Whether every model of ``model_ids`` generates no more than ``most`` by default
    (a model whose default is unknown may generate anything)."""
    defaults = [model_default(model) for model in model_ids]
    return all(own is not None and own <= most for own in defaults)


def choices(model_id: str, body: dict[str, Any]) -> int:
    """How many answers of the allowance each the body asks for (``CHOICE_FIELDS``): its
    count, else one (a value that is no count is Bedrock's to refuse)."""
    named = base_model_id(model_id)
    field = next((name for prefix, name in CHOICE_FIELDS if named.startswith(prefix)), None)
    value = body.get(field) if field is not None else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 1:
        return value
    return 1


def _least_allowance(model_id: str) -> int:
    return 0 if base_model_id(model_id).startswith(_ZERO_TAKEN) else 1


def _is_count(value: Any, least: int) -> bool:
    """Whether ``value`` is an allowance of at least ``least`` (``_least_allowance``)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _holder(body: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """The object that holds (or will hold) ``path``'s last name: missing parents made,
    and a parent that is no object replaced (Bedrock would refuse it)."""
    holder = body
    for parent in path[:-1]:
        inner = holder.get(parent)
        if not isinstance(inner, dict):
            inner = holder[parent] = {}
        holder = inner
    return holder


def _read(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = body
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value

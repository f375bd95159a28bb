"""OpenAI legacy text completions (``POST /v1/completions``): what the gateway accepts,
what its prompt costs and how many completions it asks for.

A text completion is billed like a chat completion (prompt and completion tokens),
so the checks here are those that decide what the gateway counts, reserves and
guards; the provider checks the rest (``temperature``, ``stop``, ``logit_bias``...).
A request that fails one is refused with a 400 naming the field, before it reserves
quota or reaches the provider:

- ``prompt`` (required): a string, an array of strings, an array of token ids, or an
  array of arrays of token ids, as OpenAI's API takes it. An array holds one prompt
  per string (or per array of ids), at most ``limits.max_messages`` of them; an empty
  string is a prompt (fill-in-the-middle at the start of a file), an empty array none;
- ``max_tokens``: an integer >= 0 (or null), the completion allowance of each choice;
  0 is OpenAI's way to score a prompt (``echo`` and ``logprobs``: the prompt's log
  probabilities, nothing generated), which vLLM serves too;
- ``n`` and ``best_of``: integers from 1 to ``MAX_CHOICES`` (or null), ``best_of`` at
  least ``n``: the provider generates ``best_of`` candidates (``n`` when unset) for
  each prompt and bills them all;
- ``suffix``: a string (or null), text the provider reads after the insertion point;
- ``echo``: a boolean (or null); ``logprobs``: an integer >= 0 (or null);
- no ``messages`` (a body meant for chat completions).

``stream`` must be a boolean, as on every generating route (``ChatRequestStage``).

The prompt's tokens (``estimate_prompt``) are counted as the embeddings input is:
token ids one each, text at one token per four characters (``openai_inputs.
estimate_tokens``), the ``suffix`` included once per prompt (the provider reads it
after each prompt of a batch, and bills it each time). The completion the quota
reserves (``completion_allowance``) is ``max_tokens`` (else
``quotas.default_max_tokens``; none for a prompt scored with 0) times
``generated_choices``: every prompt of a batch gets its own ``best_of`` (else ``n``)
completions.
"""

from __future__ import annotations

from typing import Any

from extproc.errors import BadRequestError
from extproc.openai_inputs import (
    MAX_CHOICES,
    check_items,
    estimate_tokens,
    positive_int,
    token_id,
)
from extproc.quota.estimate import CHARS_PER_TOKEN

# Where a completions body bounds its completion: one field, per choice.
ALLOWANCE_FIELDS = ("max_tokens",)


def check_completions_body(body: dict[str, Any], max_prompts: int) -> None:
    """Refuse a body the gateway cannot count, guard or bill (the module docstring)."""
    if "messages" in body:
        raise BadRequestError(
            "this is a text completions route: send 'prompt', not 'messages' "
            "(chat completions are served on /v1/chat/completions)",
            param="messages",
        )
    _check_prompt(body.get("prompt"), max_prompts)
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise BadRequestError("'suffix' must be a string", param="suffix")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and not token_id(max_tokens):
        raise BadRequestError("'max_tokens' must be an integer >= 0", param="max_tokens")
    for name in ("n", "best_of"):
        value = body.get(name)
        if value is not None and not positive_int(value):
            raise BadRequestError(f"'{name}' must be an integer >= 1", param=name)
    choices, candidates = body.get("n"), body.get("best_of")
    for name, value in (("n", choices), ("best_of", candidates)):
        if isinstance(value, int) and value > MAX_CHOICES:
            raise BadRequestError(f"'{name}' must be at most {MAX_CHOICES}", param=name)
    if isinstance(choices, int) and isinstance(candidates, int) and candidates < choices:
        raise BadRequestError(
            "'best_of' must be at least 'n': it is how many completions are generated, "
            "'n' how many of them are returned",
            param="best_of",
        )
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise BadRequestError("'echo' must be a boolean", param="echo")
    logprobs = body.get("logprobs")
    if logprobs is not None and not (token_id(logprobs)):
        raise BadRequestError("'logprobs' must be an integer >= 0", param="logprobs")


def _check_prompt(value: Any, max_prompts: int) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise BadRequestError(
            "'prompt' is required: a string, an array of strings, an array of token ids "
            "or an array of arrays of token ids",
            param="prompt",
        )
    if token_id(value[0]):
        # One prompt of token ids: as long as the model's context, not a batch.
        check_items(value, "prompt", empty_strings=True)
        return
    if len(value) > max_prompts:
        raise BadRequestError(
            f"'prompt' has {len(value)} prompts; the limit is {max_prompts}", param="prompt"
        )
    check_items(value, "prompt", empty_strings=True)


def estimate_prompt(body: dict[str, Any]) -> int:
    """The prompt's tokens: token ids as given, text at one token per four characters
    (at least one per prompt), and the ``suffix`` the provider reads after each prompt."""
    suffix = body.get("suffix")
    suffix_tokens = len(suffix) // CHARS_PER_TOKEN if isinstance(suffix, str) else 0
    return estimate_tokens(body.get("prompt")) + suffix_tokens * prompt_count(body)


def completion_allowance(body: dict[str, Any], default_max_tokens: int) -> int:
    """The tokens each completion may generate: ``max_tokens``, 0 included (a prompt
    scored, nothing generated: reserving the default for it would refuse a batch of
    them that fits the budget), else ``default_max_tokens``."""
    value = body.get("max_tokens")
    return value if isinstance(value, int) and token_id(value) else default_max_tokens


def prompt_count(body: dict[str, Any]) -> int:
    """How many prompts the body sends: an array of strings or of id arrays is a batch,
    one prompt each; a string or one array of ids is one."""
    value = body.get("prompt")
    if isinstance(value, list) and value and isinstance(value[0], str | list):
        return len(value)
    return 1


def returned_choices(body: dict[str, Any]) -> int:
    """How many choices the answer holds, each ending with its finish reason: ``n`` for
    every prompt (the ``best_of`` candidates beyond are the provider's own)."""
    value = body.get("n")
    per_prompt = value if isinstance(value, int) and positive_int(value) else 1
    return prompt_count(body) * per_prompt


def generated_choices(body: dict[str, Any]) -> int:
    """How many completions the provider generates, each up to ``max_tokens``: for every
    prompt, ``best_of`` candidates (``n`` when unset; one by default)."""
    per_prompt = 1
    for name in ("n", "best_of"):
        value = body.get(name)
        if isinstance(value, int) and positive_int(value):
            per_prompt = max(per_prompt, value)
    return prompt_count(body) * per_prompt

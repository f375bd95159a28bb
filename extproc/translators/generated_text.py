"""How much text a provider generated, read from the bytes of its answer.

A stream cut before the provider's usage report was still generated, and billed: the
gateway estimates its completion from the characters of generated text it carried
(``stages.partial_usage``), and so for a JSON answer without a count
(``stages.cut_answer``). This module counts them in any provider's bytes (OpenAI's SSE
and that of OpenAI-compatible providers, Anthropic's SSE, the JSON payloads of
Bedrock's event stream), and a translator that unwraps a provider's encoding (base64
in Bedrock's InvokeModel stream) counts them in what it unwrapped.
"""

from __future__ import annotations

import re

# A JSON string value of a field that carries generated text; escapes count as their
# escaped length, close enough for an estimate. Reasoning is generated and billed as
# output too: Anthropic's ``thinking``, Bedrock's ``reasoningContent`` (as ``text``),
# and, beside ``content`` in OpenAI-compatible streams, ``reasoning_content`` (DeepSeek,
# older vLLM) or ``reasoning`` (vLLM, Ollama, Groq, OpenRouter), whose name is captured
# (``generated_chars``). Bedrock's InvokeModel families name their text their own way:
# Llama's ``generation``, Titan Text's ``outputText`` (Mistral's is ``text``). A spoken
# answer of OpenAI's audio models (``modalities: ["audio"]``) has no ``content``: its text
# is the ``transcript`` of its ``audio`` (a stream's ``delta.audio.transcript``), counted
# as text, a floor of what its speech is billed. One pattern for all: OpenAI's own streams
# scan each chunk once.
# A string's value is read as runs of plain bytes between escapes (``_STRING``), not as
# an alternative per byte: the same bytes matched, about 6 times as fast on long values.
_STRING = rb'"([^"\\]*(?:\\.[^"\\]*)*)"'
_TEXT_VALUE = re.compile(
    rb'"(?:content|text|arguments|partial_json|input|thinking|generation|outputText'
    rb'|transcript|(reasoning(?:_content)?))"'
    rb"\s*:\s*" + _STRING
)
# A Responses API stream carries its generated text in the ``delta`` of its delta events
# (and again whole in the ``.done`` events and the terminal response, not counted).
_RESPONSES_DELTA = re.compile(rb'"delta"\s*:\s*' + _STRING)
# OpenRouter repeats the ``reasoning`` of a delta in its ``reasoning_details``, whose
# ``reasoning.text`` entries carry it as ``text``, counted already.
_REASONING_DETAIL_TEXT = b'"reasoning.text"'


def generated_chars(chunk: bytes) -> int:
    """Characters of generated text in one piece of a provider's stream (or answer), the
    reasoning counted once under whichever names the provider gives it."""
    chars = named = aliased = 0
    for reasoning, value in _TEXT_VALUE.findall(chunk):
        if not reasoning:
            chars += len(value)
        elif reasoning == b"reasoning":
            named += len(value)
        else:
            aliased += len(value)
    if (named or aliased) and _REASONING_DETAIL_TEXT not in chunk:
        # vLLM may send the same text under both names: it was generated once.
        chars += max(named, aliased)
    return chars


def responses_delta_chars(chunk: bytes) -> int:
    """Characters of generated text in one piece of a Responses API stream."""
    return sum(len(found) for found in _RESPONSES_DELTA.findall(chunk))

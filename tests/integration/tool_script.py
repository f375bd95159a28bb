"""A scripted tool-calling turn, shared by the translated providers' tool-call tests.

The mocks answer it (``x-mock-reply`` and ``x-mock-tool-calls``, docs/mock-llm.md)
the way Anthropic and Bedrock stream text and tool input: the client must see two
calls whose arguments join into exactly these pieces.
"""

from __future__ import annotations

import json
from typing import Any

QUESTION: Any = {"role": "user", "content": "Weather in Paris and the time in Lyon?"}
# Strict function tools: what the openai client's stream() helper requires.
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
# What the model says before calling, and each call's arguments as the provider streams them.
SAID = ["Let", " me", " check", "."]
WEATHER_PIECES = ['{"city": "Pa', 'ris", "un', 'it": "°C"}']
TIME_PIECES = ['{"city"', ': "Lyon"}']
# Headers are ASCII: json.dumps escapes the degree sign, which the mock sends as UTF-8.
SCRIPT = {
    "x-mock-reply": json.dumps(SAID),
    "x-mock-tool-calls": json.dumps(
        [
            {"name": "get_weather", "arguments": WEATHER_PIECES},
            {"name": "get_time", "arguments": TIME_PIECES},
        ]
    ),
}
# Output tokens the mock reports: the text pieces and the calls' input pieces.
OUTPUT_TOKENS = len(SAID) + len(WEATHER_PIECES) + len(TIME_PIECES)

"""The text of a Gemini API request and of its whole answer, as guard slots, and the
route's enrichment written into a Gemini body.

A client of Gemini's own API (google-genai, Gemini CLI, ADK) sends ``systemInstruction``
and ``contents`` of parts, in camelCase or snake_case. Guards must read every text the
model reads, with the role it has there (Gemini's ``model`` is the assistant), and a mask
written into a slot must be what Vertex (or the client, for an answer) then gets. Thought
parts are the model's reasoning and are left as they are, as reasoning is elsewhere.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.config.guard_model import EnrichmentConfig, GuardConfig
from extproc.guardrails.content import TextSlot
from extproc.guardrails.enrichment import enrich
from extproc.guardrails.gemini_text import answer_slots, guarded_request, request_slots
from extproc.guardrails.matching import MatcherGuard, Matchers, apply

EMAIL = "jane@example.com"
PII = GuardConfig.model_validate({"name": "pii", "builtins": ["EMAIL"], "action": "mask"})


def read(slots: list[TextSlot]) -> list[tuple[str, str]]:
    """What the guards read: (role, text) of each slot, in order."""
    return [(slot.role, slot.text) for slot in slots]


def mask_emails(slots: list[TextSlot]) -> None:
    """What the guard stages do with a MASK guard for emails."""
    matchers = Matchers((MatcherGuard(PII, 256),))
    for slot in slots:
        text = slot.text
        _, hits, _ = matchers.scan(text, json_text=slot.is_json)
        if hits:
            slot.write(apply(text, hits))


def content(role: str | None, *parts: dict[str, Any]) -> dict[str, Any]:
    made: dict[str, Any] = {"parts": list(parts)}
    if role is not None:
        made["role"] = role
    return made


# --- requests ----------------------------------------------------------------------------


def test_the_system_instruction_and_each_contents_text_are_read_with_their_roles() -> None:
    body = {
        "systemInstruction": {"parts": [{"text": f"Escalate to {EMAIL}."}]},
        "contents": [
            content("user", {"text": "hi"}, {"text": f"I am {EMAIL}"}),
            content("model", {"text": "Hello."}),
            content(None, {"text": "no role is the user's"}),
        ],
    }
    slots = request_slots(body)
    assert read(slots) == [
        ("system", f"Escalate to {EMAIL}."),
        ("user", "hi"),
        ("user", f"I am {EMAIL}"),
        ("assistant", "Hello."),
        ("user", "no role is the user's"),
    ]
    mask_emails(slots)
    assert body["systemInstruction"] == {"parts": [{"text": "Escalate to <EMAIL>."}]}
    assert body["contents"][0]["parts"][1] == {"text": "I am <EMAIL>"}


def test_snake_case_spellings_are_read_as_googles_rest_api_takes_them() -> None:
    body = {
        "system_instruction": {"parts": [{"text": f"Owner {EMAIL}"}]},
        "contents": [
            content("model", {"function_call": {"name": "send", "args": {"to": EMAIL}}}),
            content("user", {"function_response": {"name": "send", "response": {"ok": EMAIL}}}),
            content("model", {"executable_code": {"language": "PYTHON", "code": f"'{EMAIL}'"}}),
            content("user", {"code_execution_result": {"outcome": "OUTCOME_OK", "output": EMAIL}}),
        ],
    }  # fmt: skip
    assert read(request_slots(body)) == [
        ("system", f"Owner {EMAIL}"),
        ("assistant", "send"),
        ("assistant", "to"),
        ("assistant", EMAIL),
        ("tool", "send"),
        ("tool", "ok"),
        ("tool", EMAIL),
        ("assistant", f"'{EMAIL}'"),
        ("tool", EMAIL),
    ]


def test_a_function_calls_args_are_the_assistants_keys_and_strings_masked_in_place() -> None:
    args = {"to": EMAIL, EMAIL: "cc", "count": 3, "tags": ["a", None, True]}
    call = {"name": "send_email", "args": args}
    body = {"contents": [content("model", {"text": "Sending."}, {"functionCall": call})]}
    slots = request_slots(body)
    assert read(slots) == [
        ("assistant", "Sending."),
        ("assistant", "send_email"),
        ("assistant", "to"),
        ("assistant", EMAIL),
        ("assistant", EMAIL),
        ("assistant", "cc"),
        ("assistant", "count"),
        ("assistant", "tags"),
        ("assistant", "a"),
    ]
    # Each key and string is read on its own, as Converse's toolUse input: not JSON text.
    assert not any(slot.is_json for slot in slots)
    mask_emails(slots)
    assert call["args"] is args
    assert list(args.items()) == [
        ("to", "<EMAIL>"),
        ("<EMAIL>", "cc"),
        ("count", 3),
        ("tags", ["a", None, True]),
    ]
    # A function's name is read (``content.name_slot``), never masked.
    assert [slot.fixed for slot in slots if slot.fixed] == ["a tool call's name"]
    assert call["name"] == "send_email"


def test_what_a_function_returned_is_the_tools_wherever_it_is_sent() -> None:
    returned = {"rows": [{"email": EMAIL}], "total": 1}
    body = {
        "contents": [
            content(
                "user",
                {"functionResponse": {"name": "lookup", "response": returned}},
                {"text": "Go on."},
            )
        ]
    }
    slots = request_slots(body)
    assert read(slots) == [
        ("tool", "lookup"),
        ("tool", "rows"),
        ("tool", "email"),
        ("tool", EMAIL),
        ("tool", "total"),
        ("user", "Go on."),
    ]
    mask_emails(slots)
    assert returned == {"rows": [{"email": "<EMAIL>"}], "total": 1}


def test_files_and_inline_data_are_not_read_and_thought_text_is() -> None:
    thought = {"text": f"They said {EMAIL}", "thought": True, "thoughtSignature": "c2ln"}
    body = {
        "contents": [
            content("user", {"inlineData": {"mimeType": "image/png", "data": "aGk="}}),
            content("user", {"fileData": {"mimeType": "text/plain", "fileUri": "gs://b/o"}}),
            content("model", thought, {"text": "Noted.", "thoughtSignature": "c2ln"}),
        ],
        "tools": [{"functionDeclarations": [{"name": "f", "description": EMAIL}]}],
    }
    slots = request_slots(body)
    assert read(slots) == [("assistant", f"They said {EMAIL}"), ("assistant", "Noted.")]
    mask_emails(slots)
    assert thought["text"] == "They said <EMAIL>"
    assert thought["thoughtSignature"] == "c2ln", "the signature goes back as it came"


def test_a_count_of_a_whole_request_is_read_as_that_request() -> None:
    request = {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [content("user", {"text": f"I am {EMAIL}"})],
    }
    body = {"generateContentRequest": request}
    assert guarded_request(body) is request
    slots = request_slots(body)
    assert read(slots) == [("system", "Be brief."), ("user", f"I am {EMAIL}")]
    mask_emails(slots)
    assert request["contents"][0]["parts"] == [{"text": "I am <EMAIL>"}]
    plain = {"contents": [content("user", {"text": "x"})]}
    assert guarded_request(plain) is plain


# --- whole answers -----------------------------------------------------------------------


def test_an_answers_text_and_function_calls_are_the_assistants_then_its_thoughts() -> None:
    answer = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": f"thinking about {EMAIL}", "thought": True},
                        {"text": f"Write to {EMAIL}."},
                        {"functionCall": {"name": "send", "args": {"to": EMAIL}}},
                    ],
                },
                "finishReason": "STOP",
            },
            {"content": {"parts": [{"text": "second"}]}, "index": 1},
        ],
        "usageMetadata": {"promptTokenCount": 3},
    }
    slots = answer_slots(answer)
    assert read(slots) == [
        ("assistant", f"Write to {EMAIL}."),
        ("assistant", "to"),
        ("assistant", EMAIL),
        ("assistant", "second"),
        ("assistant", f"thinking about {EMAIL}"),
    ]
    mask_emails(slots)
    parts = answer["candidates"][0]["content"]["parts"]
    # The client is shown its thought summaries: masked in place, still a thought.
    assert parts[0] == {"text": "thinking about <EMAIL>", "thought": True}
    assert parts[1] == {"text": "Write to <EMAIL>."}
    assert parts[2]["functionCall"]["args"] == {"to": "<EMAIL>"}


def test_answers_without_candidates_have_no_text() -> None:
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {}}
    for answer in (blocked, {"error": {"code": 500}}, [], "x", {"candidates": "x"}):
        assert answer_slots(answer) == []


# --- enrichment ----------------------------------------------------------------------------

ENRICHMENT = EnrichmentConfig.model_validate(
    {
        "prepend": [
            {"role": "system", "content": "Policy for {user_id}."},
            {"role": "system", "content": "Second rule."},
            {"role": "user", "content": "Context."},
        ],
        "append": [
            {"role": "user", "content": "Answer briefly."},
            {"role": "system", "content": "Last rule."},
        ],
    }
)


def enriched(body: dict[str, Any]) -> dict[str, Any]:
    enrich(body, ENRICHMENT, {"user_id": "alice"}, anthropic=False, gemini=True)
    return body


def test_system_messages_go_into_the_system_instruction_and_user_ones_into_contents() -> None:
    body = enriched(
        {
            "systemInstruction": {"parts": [{"text": "client's system"}]},
            "contents": [content("user", {"text": "first"}), content("model", {"text": "r"})],
        }
    )
    assert body["systemInstruction"]["parts"] == [
        {"text": "Policy for alice."},
        {"text": "Second rule."},
        {"text": "client's system"},
        {"text": "Last rule."},
    ]
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Context."}]},
        content("user", {"text": "first"}),
        content("model", {"text": "r"}),
        {"role": "user", "parts": [{"text": "Answer briefly."}]},
    ]


def test_a_system_instruction_is_made_when_missing_in_the_bodys_spelling() -> None:
    camel = enriched({"contents": [content("user", {"text": "x"})]})
    assert camel["systemInstruction"] == {
        "parts": [{"text": "Policy for alice."}, {"text": "Second rule."}, {"text": "Last rule."}]
    }
    snake = enriched({"system_instruction": {"parts": []}, "contents": []})
    assert "systemInstruction" not in snake, "the body never names a field twice"
    assert [p["text"] for p in snake["system_instruction"]["parts"]] == [
        "Policy for alice.",
        "Second rule.",
        "Last rule.",
    ]
    nulled = enriched({"system_instruction": None, "contents": []})
    assert "systemInstruction" not in nulled and nulled["system_instruction"]["parts"]


def test_a_count_of_a_whole_request_is_enriched_inside_it() -> None:
    request: dict[str, Any] = {"contents": [content("user", {"text": "x"})]}
    body = {"generateContentRequest": request}
    enriched(guarded_request(body))
    assert set(body) == {"generateContentRequest"}
    assert request["systemInstruction"]["parts"][0] == {"text": "Policy for alice."}
    assert request["contents"][0] == {"role": "user", "parts": [{"text": "Context."}]}


# --- any JSON -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


def shaped(**members: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Gemini's shape with any of ``members``, or, anywhere, any JSON at all."""
    return st.fixed_dictionaries({}, optional=members) | json_values


def listed(item: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(item, max_size=3) | json_values


strings = st.text(max_size=8) | json_values
part = shaped(
    text=strings,
    thought=st.booleans() | json_values,
    functionCall=shaped(name=strings, args=json_values),
    function_response=shaped(name=strings, response=json_values),
    executableCode=shaped(code=strings),
    code_execution_result=shaped(output=strings),
)
contents = listed(shaped(role=st.sampled_from(["user", "model"]) | json_values, parts=listed(part)))
bodies = st.fixed_dictionaries(
    {},
    optional={
        "systemInstruction": shaped(parts=listed(part)),
        "system_instruction": shaped(parts=listed(part)),
        "contents": contents,
        "generateContentRequest": json_values | shaped(contents=contents),
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(body=bodies, candidates=listed(shaped(content=shaped(parts=listed(part)))))
def test_any_json_is_read_without_raising_and_every_slot_can_be_written(
    body: dict[str, Any], candidates: Any
) -> None:
    answer = {"candidates": candidates}
    for slots in (request_slots(copy.deepcopy(body)), answer_slots(answer)):
        for slot in slots:
            slot.write(slot.text + "!")
    enrich(copy.deepcopy(body), ENRICHMENT, {"user_id": ""}, anthropic=False, gemini=True)

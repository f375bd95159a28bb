"""The text of a Bedrock Converse request and of its whole answer, as guard slots.

A client speaking Bedrock's own Converse API sends its prompt in Converse's shape: a
``system`` list, ``messages`` of content blocks (text, documents, search results, tool
calls and results, guarded text, reasoning), ``promptVariables`` and tool definitions.
Guards must read every text the provider reads, with the role it has there, and a mask
written into a slot must be what Bedrock (or the client, for an answer) then gets.
Reasoning signed by the model, tool definitions and ``additionalModelRequestFields`` are
left as they are. The quota's prompt estimate counts the same text plus the tool
definitions.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.content import TextSlot
from extproc.guardrails.converse_text import answer_slots, estimate_chars, request_slots
from extproc.guardrails.matching import MatcherGuard, Matchers, apply

EMAIL = "jane@example.com"
PII = GuardConfig.model_validate({"name": "pii", "builtins": ["EMAIL"], "action": "mask"})


def read(slots: list[TextSlot]) -> list[tuple[str, str]]:
    """What the guards read: (role, text) of each slot, in order."""
    return [(slot.role, slot.text) for slot in slots]


def mask_emails(slots: list[TextSlot]) -> None:
    """What the request and response guard stages do with a MASK guard for emails."""
    matchers = Matchers((MatcherGuard(PII, 256),))
    for slot in slots:
        text = slot.text
        _, hits, _ = matchers.scan(text, json_text=slot.is_json)
        if hits:
            slot.write(apply(text, hits))


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def converse(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"messages": list(messages), **fields}


# --- request: system, prompt variables, message text ----------------------------------


def test_system_text_and_guarded_text_are_read_as_system_and_masked_in_place() -> None:
    body = converse(
        user({"text": "hi"}),
        system=[
            {"text": f"Escalate to {EMAIL}."},
            {"guardContent": {"text": {"text": f"Owner {EMAIL}", "qualifiers": ["guard_content"]}}},
            {"cachePoint": {"type": "default"}},
        ],
    )
    slots = request_slots(body)
    assert read(slots) == [
        ("system", f"Escalate to {EMAIL}."),
        ("system", f"Owner {EMAIL}"),
        ("user", "hi"),
    ]
    mask_emails(slots)
    assert body["system"][0] == {"text": "Escalate to <EMAIL>."}
    assert body["system"][1]["guardContent"]["text"] == {
        "text": "Owner <EMAIL>",
        "qualifiers": ["guard_content"],
    }
    assert body["system"][2] == {"cachePoint": {"type": "default"}}


def test_prompt_variables_are_the_users_text_read_after_system_before_messages() -> None:
    body = converse(
        user({"text": "and then?"}),
        system=[{"text": "Be brief."}],
        promptVariables={"customer": {"text": EMAIL}, "topic": {"text": "refunds"}, "odd": 3},
    )
    slots = request_slots(body)
    assert read(slots) == [
        ("system", "Be brief."),
        ("user", EMAIL),
        ("user", "refunds"),
        ("user", "and then?"),
    ]
    mask_emails(slots)
    assert body["promptVariables"]["customer"] == {"text": "<EMAIL>"}


def test_text_blocks_have_their_messages_role_and_are_masked_in_place() -> None:
    body = converse(
        user({"text": f"Mail {EMAIL}"}),
        assistant({"text": "Done."}),
        {"content": [{"text": "no role"}]},
        {"role": 7, "content": [{"text": "odd role"}]},
    )
    slots = request_slots(body)
    assert read(slots) == [
        ("user", f"Mail {EMAIL}"),
        ("assistant", "Done."),
        ("user", "no role"),
        ("user", "odd role"),
    ]
    mask_emails(slots)
    assert body["messages"][0]["content"] == [{"text": "Mail <EMAIL>"}]


def test_guarded_text_in_a_message_has_the_messages_role() -> None:
    body = converse(user({"guardContent": {"text": {"text": f"Is {EMAIL} ok?"}}}))
    slots = request_slots(body)
    assert read(slots) == [("user", f"Is {EMAIL} ok?")]
    mask_emails(slots)
    assert body["messages"][0]["content"][0]["guardContent"]["text"]["text"] == "Is <EMAIL> ok?"


def test_images_videos_audio_cache_points_and_guarded_images_are_no_text() -> None:
    body = converse(
        user(
            {"image": {"format": "png", "source": {"bytes": "aGk="}}},
            {"video": {"format": "mp4", "source": {"s3Location": {"uri": "s3://b/v.mp4"}}}},
            {"audio": {"format": "mp3", "source": {"bytes": "aGk="}}},
            {"guardContent": {"image": {"format": "png", "source": {"bytes": "aGk="}}}},
            {"cachePoint": {"type": "default"}},
        )
    )
    assert request_slots(body) == []


# --- request: documents and search results --------------------------------------------


def test_a_documents_text_and_context_are_read_but_not_its_name_or_bytes() -> None:
    body = converse(
        user(
            {
                "document": {
                    "format": "txt",
                    "name": "notes",
                    "source": {"text": f"Contact {EMAIL}"},
                    "context": f"Written by {EMAIL}",
                }
            },
            {
                "document": {
                    "format": "txt",
                    "name": "chunks",
                    "source": {"content": [{"text": "part one"}, {"text": f"cc {EMAIL}"}]},
                }
            },
            {"document": {"format": "pdf", "name": "scan", "source": {"bytes": "JVBERi0="}}},
        )
    )
    slots = request_slots(body)
    assert read(slots) == [
        ("user", f"Written by {EMAIL}"),
        ("user", f"Contact {EMAIL}"),
        ("user", "part one"),
        ("user", f"cc {EMAIL}"),
    ]
    mask_emails(slots)
    first, second, pdf = (block["document"] for block in body["messages"][0]["content"])
    assert first == {
        "format": "txt",
        "name": "notes",
        "source": {"text": "Contact <EMAIL>"},
        "context": "Written by <EMAIL>",
    }
    assert second["source"]["content"] == [{"text": "part one"}, {"text": "cc <EMAIL>"}]
    assert pdf == {"format": "pdf", "name": "scan", "source": {"bytes": "JVBERi0="}}


def test_a_search_results_title_and_text_are_read_but_not_its_source() -> None:
    result = {
        "source": "https://example.com/a",
        "title": "Staff page",
        "content": [{"text": f"Reach {EMAIL}"}],
        "citations": {"enabled": True},
    }
    body = converse(user({"searchResult": result}))
    slots = request_slots(body)
    assert read(slots) == [("user", "Staff page"), ("user", f"Reach {EMAIL}")]
    mask_emails(slots)
    assert result["content"] == [{"text": "Reach <EMAIL>"}]
    assert result["source"] == "https://example.com/a"


def test_cited_text_sent_back_is_read_with_its_messages_role_and_citations_are_not() -> None:
    cited = {
        "content": [{"text": f"Write to {EMAIL}."}],
        "citations": [{"title": "notes", "sourceContent": [{"text": "quoted"}]}],
    }
    body = converse(assistant({"citationsContent": cited}))
    slots = request_slots(body)
    assert read(slots) == [("assistant", f"Write to {EMAIL}.")]
    mask_emails(slots)
    assert cited["content"] == [{"text": "Write to <EMAIL>."}]


# --- request: tool calls and results ---------------------------------------------------


def test_a_tool_calls_input_is_the_assistants_keys_and_strings_in_place() -> None:
    tool_input = {"to": EMAIL, EMAIL: "cc", "count": 3, "tags": ["a", None, True]}
    use = {"toolUseId": "t1", "name": "send_email", "input": tool_input}
    body = converse(assistant({"text": "Sending."}, {"toolUse": use}))
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
    # Each key and string is read on its own, as an Anthropic tool input's: not JSON text.
    assert not any(slot.is_json for slot in slots)
    mask_emails(slots)
    # The same object, its masked key renamed where it stands: values and order kept.
    assert use["input"] is tool_input
    assert list(tool_input.items()) == [
        ("to", "<EMAIL>"),
        ("<EMAIL>", "cc"),
        ("count", 3),
        ("tags", ["a", None, True]),
    ]
    assert use["name"] == "send_email"


def test_a_tool_calls_input_is_the_assistants_even_in_a_user_message() -> None:
    body = converse(user({"toolUse": {"toolUseId": "t1", "name": "f", "input": {"q": "x"}}}))
    assert read(request_slots(body)) == [("assistant", "f"), ("assistant", "q"), ("assistant", "x")]


def test_a_tool_input_that_is_a_bare_string_is_one_slot_written_in_place() -> None:
    use = {"toolUseId": "t1", "name": "shell", "input": f"mail {EMAIL}"}
    slots = request_slots(converse(assistant({"toolUse": use})))
    assert read(slots) == [("assistant", "shell"), ("assistant", f"mail {EMAIL}")]
    mask_emails(slots)
    assert use["input"] == "mail <EMAIL>"


def test_what_a_tool_returned_is_read_as_tool_text_json_documents_and_search_results() -> None:
    returned = {"rows": [{"email": EMAIL}], "total": 1}
    result = {
        "toolUseId": "t1",
        "status": "success",
        "content": [
            {"text": f"Found {EMAIL}"},
            {"json": returned},
            {"json": f"bare {EMAIL}"},
            {"document": {"format": "txt", "name": "log", "source": {"text": "line"}}},
            {"searchResult": {"source": "s", "title": "t", "content": [{"text": "hit"}]}},
            {"image": {"format": "png", "source": {"bytes": "aGk="}}},
        ],
    }
    body = converse(user({"toolResult": result}, {"text": "Go on."}))
    slots = request_slots(body)
    assert read(slots) == [
        ("tool", f"Found {EMAIL}"),
        ("tool", "rows"),
        ("tool", "email"),
        ("tool", EMAIL),
        ("tool", "total"),
        ("tool", f"bare {EMAIL}"),
        ("tool", "line"),
        ("tool", "t"),
        ("tool", "hit"),
        ("user", "Go on."),
    ]
    mask_emails(slots)
    assert result["content"][0] == {"text": "Found <EMAIL>"}
    assert result["content"][1]["json"] is returned
    assert returned == {"rows": [{"email": "<EMAIL>"}], "total": 1}
    assert result["content"][2] == {"json": "bare <EMAIL>"}


# --- request: what is left as it is ----------------------------------------------------


def test_signed_reasoning_is_read_as_signed_and_encrypted_reasoning_is_not() -> None:
    reasoning = {"reasoningText": {"text": f"They said {EMAIL}", "signature": "sig"}}
    body = converse(
        assistant({"reasoningContent": reasoning}, {"text": "Noted."}),
        assistant({"reasoningContent": {"redactedContent": "b3BhcXVl"}}),
    )
    slots = request_slots(body)
    assert read(slots) == [("assistant", f"They said {EMAIL}"), ("assistant", "Noted.")]
    # The stage drops or refuses it rather than write a mask the signature would fail.
    assert [slot.signed for slot in slots] == [True, False]


def test_unsigned_reasoning_sent_back_is_masked_in_place() -> None:
    reasoning = {"reasoningText": {"text": f"They said {EMAIL}"}}
    body = converse(assistant({"reasoningContent": reasoning}, {"text": "Noted."}))
    slots = request_slots(body)
    assert not any(slot.signed for slot in slots)
    mask_emails(slots)
    assert reasoning["reasoningText"]["text"] == "They said <EMAIL>"


def test_tool_definitions_and_model_fields_are_not_read() -> None:
    spec = {
        "name": "lookup",
        "description": f"Ask {EMAIL}",
        "inputSchema": {"json": {"type": "object", "properties": {"q": {"type": "string"}}}},
    }
    body = converse(
        user({"text": "hi"}),
        toolConfig={"tools": [{"toolSpec": spec}], "toolChoice": {"auto": {}}},
        additionalModelRequestFields={"prompt_prefix": EMAIL, "top_k": 5},
        inferenceConfig={"maxTokens": 10, "stopSequences": ["STOP"]},
    )
    assert read(request_slots(body)) == [("user", "hi")]


def test_a_whole_conversation_masked_is_what_goes_to_bedrock() -> None:
    body = converse(
        user({"text": f"Email {EMAIL} the report."}),
        assistant({"toolUse": {"toolUseId": "t1", "name": "send", "input": {"to": EMAIL}}}),
        user({"toolResult": {"toolUseId": "t1", "content": [{"json": {"sent_to": EMAIL}}]}}),
        system=[{"text": f"Owner: {EMAIL}"}],
    )
    mask_emails(request_slots(body))
    assert EMAIL.encode() not in orjson.dumps(body)
    assert body["messages"][1]["content"][0]["toolUse"]["input"] == {"to": "<EMAIL>"}


# --- whole answers ---------------------------------------------------------------------


def answer(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": list(blocks)}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12},
    }


def test_an_answers_text_tool_calls_and_cited_text_are_the_assistants() -> None:
    whole = answer(
        {"reasoningContent": {"reasoningText": {"text": f"maybe {EMAIL}", "signature": "s"}}},
        {"text": f"Writing to {EMAIL}."},
        {"citationsContent": {"content": [{"text": f"per {EMAIL}"}], "citations": []}},
        {"toolUse": {"toolUseId": "t1", "name": "send", "input": {"to": EMAIL}}},
    )
    slots = answer_slots(whole)
    assert read(slots) == [
        ("assistant", f"Writing to {EMAIL}."),
        ("assistant", f"per {EMAIL}"),
        ("assistant", "to"),
        ("assistant", EMAIL),
        ("assistant", f"maybe {EMAIL}"),
    ]
    # The reasoning is read, signed: the response stage refuses a mask there.
    assert [slot.signed for slot in slots] == [False, False, False, False, True]
    mask_emails([slot for slot in slots if not slot.signed])
    content = whole["output"]["message"]["content"]
    assert content[1] == {"text": "Writing to <EMAIL>."}
    assert content[2]["citationsContent"]["content"] == [{"text": "per <EMAIL>"}]
    assert content[3]["toolUse"]["input"] == {"to": "<EMAIL>"}
    # Signed reasoning is never rewritten.
    assert content[0]["reasoningContent"]["reasoningText"]["text"] == f"maybe {EMAIL}"


def test_an_answers_text_is_the_assistants_whatever_role_its_message_names() -> None:
    whole = {"output": {"message": {"content": [{"text": "hello"}]}}}
    assert read(answer_slots(whole)) == [("assistant", "hello")]


def test_answers_with_no_message_have_no_text() -> None:
    for odd in (None, [], "text", {}, {"output": None}, {"output": {"message": "x"}},
                {"output": {"message": {"content": "x"}}}, {"output": [1]}):  # fmt: skip
        assert answer_slots(odd) == []


# --- the quota's estimate --------------------------------------------------------------


def test_the_estimate_counts_every_text_the_provider_reads() -> None:
    tools = [{"toolSpec": {"name": "send", "description": "Send mail", "inputSchema": {}}}]
    tool_input = {"to": "boss", "copies": 12}
    body = converse(
        user({"text": "12345"}, {"image": {"format": "png", "source": {"bytes": "A" * 999}}}),
        assistant(
            {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "S" * 99}}},
            {"toolUse": {"toolUseId": "t1", "name": "send", "input": tool_input}},
        ),
        user({"toolResult": {"toolUseId": "t1", "content": [{"json": [1, 2]}, {"text": "ok"}]}}),
        system=[{"text": "sys"}],
        promptVariables={"v": {"text": "var"}},
        toolConfig={"tools": tools},
        additionalModelRequestFields={"ignored": "x" * 999},
    )
    expected = (
        len("sys")
        + len("var")
        + len("12345")
        + len("hmm")  # reasoning sent back is read (and billed) in a tool-use loop
        + len("send")  # the name of the tool called
        + len(orjson.dumps(tool_input))  # numbers and punctuation too, as JSON
        + len(orjson.dumps([1, 2]))
        + len("ok")
        + len(orjson.dumps(tools))  # as the chat estimate counts tool definitions
    )
    assert estimate_chars(body) == expected


def test_the_estimate_of_a_body_with_no_text_is_zero() -> None:
    assert estimate_chars({}) == 0
    assert estimate_chars({"messages": "x", "system": 3, "toolConfig": {"tools": []}}) == 0


# --- any shape -------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


def shaped(**members: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Converse's shape with any of ``members``, or, anywhere, any JSON at all."""
    return st.fixed_dictionaries({}, optional=members) | json_values


def listed(item: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(item, max_size=3) | json_values


strings = st.text(max_size=8) | json_values
parts = listed(shaped(text=strings))
document = shaped(name=strings, context=strings, source=shaped(text=strings, content=parts))
search_result = shaped(source=strings, title=strings, content=parts)
result_item = shaped(text=strings, json=json_values, document=document, searchResult=search_result)
block = shaped(
    text=strings,
    guardContent=shaped(text=shaped(text=strings)),
    document=document,
    searchResult=search_result,
    citationsContent=shaped(content=parts),
    toolUse=shaped(name=strings, input=json_values),
    toolResult=shaped(content=listed(result_item)),
    reasoningContent=shaped(reasoningText=shaped(text=strings)),
)
contents = listed(block)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "system": contents,
        "messages": listed(shaped(role=st.sampled_from(["user", "assistant"]) | json_values,
                                  content=contents)),
        "promptVariables": st.dictionaries(st.text(max_size=4), shaped(text=strings)) | json_values,
        "toolConfig": shaped(tools=json_values),
    },
)  # fmt: skip


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(body=bodies, content=contents, output=json_values)
def test_any_json_is_read_without_raising_and_every_slot_can_be_written(
    body: dict[str, Any], content: Any, output: Any
) -> None:
    read = sum(len(slot.text) for slot in request_slots(copy.deepcopy(body)))
    # The quota counts at least the text the guards read: none reaches Bedrock past both.
    assert estimate_chars(body) >= read
    answer = {"output": {"message": {"content": content}}}
    for slots in (request_slots(body), answer_slots(answer), answer_slots(output)):
        for slot in slots:
            slot.write(slot.text + "!")

"""A masked ``enum`` stays a valid ``enum``: values masked alike stay distinct.

A request guard masks the values a schema's ``enum`` allows, as any text the model reads.
Two addresses in one ``enum`` both became ``<EMAIL>``, and the provider got an ``enum``
naming one value twice, which OpenAI's strict mode and Gemini refuse with a 400 about a
schema the client never wrote. Now the second is ``<EMAIL>#2`` (as a tool input's key
masked alike is), on every API, whether a matcher or a webhook masked it.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.guardrails.schema_enum import DistinctEnum
from extproc.mock_llm.strict_schemas import strict_schema_error
from extproc.runtime import Services
from tests.unit.test_gemini_guard_flow import GENERATE, gateway, upstream
from tests.unit.test_guard_flow import Gateway, upstream_body
from tests.unit.test_guard_tool_definitions import (
    POLICIES,
    chat,
    config_with,
    converse,
    function_tool,
    gateway_for,
    gemini,
    gemini_schema,
    messages,
    refused,
    responses,
    schema,
    through_converse,
    tool_config,
    vertex,  # noqa: F401 (the fixture the Gemini test takes)
)
from tests.unit.test_guardrail_review import Hook, serving

ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"


def enum_of(sent_schema: dict[str, Any]) -> list[Any]:
    return list(sent_schema["properties"]["to"]["enum"])


async def test_two_addresses_in_a_chat_tools_enum_are_masked_to_distinct_values() -> None:
    tool = function_tool("Mail.", schema("Who", enum=[ALICE, "ops", BOB, CAROL]))
    output = {"type": "json_schema",
              "json_schema": {"name": "answer", "strict": True,
                              "schema": schema("x", enum=[ALICE, BOB])}}  # fmt: skip
    answers = await gateway_for("openai-chat").send(
        "/v1/chat/completions", chat(tools=[tool], response_format=output)
    )
    assert refused(answers) is None
    sent = upstream_body(answers[1])
    assert enum_of(sent["tools"][0]["function"]["parameters"]) == [
        "<EMAIL>", "ops", "<EMAIL>#2", "<EMAIL>#3",
    ]  # fmt: skip
    # Each enum has its own values: the structured output's starts again at <EMAIL>.
    assert enum_of(sent["response_format"]["json_schema"]["schema"]) == ["<EMAIL>", "<EMAIL>#2"]


async def test_a_masked_value_never_takes_a_value_the_enum_already_lists() -> None:
    # The client's own "<EMAIL>" (before or after) and "<EMAIL>#2" stay what they were.
    tool = function_tool("Mail.", schema("Who", enum=[ALICE, "<EMAIL>", "<EMAIL>#2", BOB]))
    answers = await gateway_for("openai-chat").send("/v1/chat/completions", chat(tools=[tool]))
    sent = enum_of(upstream_body(answers[1])["tools"][0]["function"]["parameters"])
    assert sent == ["<EMAIL>#3", "<EMAIL>", "<EMAIL>#2", "<EMAIL>#4"]


async def test_an_anthropic_and_a_responses_enum_are_masked_to_distinct_values() -> None:
    tool = {"name": "send_mail", "input_schema": schema("Who", enum=[ALICE, BOB])}
    answers = await gateway_for("anthropic-messages").send("/v1/messages", messages(tools=[tool]))
    assert enum_of(upstream_body(answers[1])["tools"][0]["input_schema"]) == [
        "<EMAIL>",
        "<EMAIL>#2",
    ]
    text = {"format": {"type": "json_schema", "name": "answer", "strict": True,
                       "schema": schema("Who", enum=[ALICE, BOB])}}  # fmt: skip
    answers = await gateway_for("openai-responses").send("/v1/responses", responses(text=text))
    sent = upstream_body(answers[1])["text"]["format"]["schema"]
    assert enum_of(sent) == ["<EMAIL>", "<EMAIL>#2"]


async def test_a_converse_schema_in_json_text_is_written_with_distinct_values(
    services: Services,
) -> None:
    output = {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
        "name": "answer",
        "schema": orjson.dumps(schema("Who", enum=[ALICE, BOB])).decode()}}}}  # fmt: skip
    body = converse(toolConfig=tool_config("Mail.", schema("Who", enum=[ALICE, BOB])),
                    outputConfig=output)  # fmt: skip
    answers = await through_converse(copy.deepcopy(body), services)
    assert refused(answers) is None
    sent = upstream_body(answers[1])
    spec = sent["toolConfig"]["tools"][0]["toolSpec"]
    assert enum_of(spec["inputSchema"]["json"]) == ["<EMAIL>", "<EMAIL>#2"]
    written = sent["outputConfig"]["textFormat"]["structure"]["jsonSchema"]["schema"]
    assert enum_of(orjson.loads(written)) == ["<EMAIL>", "<EMAIL>#2"]


async def test_a_gemini_response_schema_enum_is_masked_to_distinct_values(
    vertex: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    response_schema = gemini_schema("Who")
    response_schema["properties"]["to"]["enum"] = [ALICE, BOB]
    config = {"responseMimeType": "application/json", "responseSchema": response_schema}
    async with gateway(vertex, POLICIES, guardrails="p") as gw:
        sent = upstream(await gw.send(GENERATE, gemini(generationConfig=config)))
    assert enum_of(sent["generationConfig"]["responseSchema"]) == ["<EMAIL>", "<EMAIL>#2"]


async def test_a_webhook_masking_two_values_alike_leaves_them_distinct() -> None:
    def mask(call: dict[str, Any]) -> dict[str, Any]:
        entries = [
            {**entry, "content": "[name]" if entry["content"] in ("Alice", "Bob") else
             entry["content"]}
            for entry in call["body"]["messages"]
        ]  # fmt: skip
        return {"action": {"body": {"messages": entries}}}

    hook = Hook(mask)
    async with serving(hook.handle) as port:
        guardrails = {
            "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port}],
            "policies": [
                {"name": "hooked", "request": [{"name": "hook-guard", "webhook": "hook"}]}
            ],
        }
        gate = Gateway(config_with(guardrails, {"openai-chat": {"guardrails": "hooked"}}))
        tool = function_tool("Mail.", schema("Who", enum=["Alice", "Bob", "Carl"]))
        answers = await gate.send("/v1/chat/completions", chat(tools=[tool]))
    sent = enum_of(upstream_body(answers[1])["tools"][0]["function"]["parameters"])
    assert sent == ["[name]", "[name]#2", "Carl"]


async def test_examples_masked_alike_are_left_alike() -> None:
    # Only an enum must list distinct values; examples are shown as they are.
    to = {"type": "string", "examples": [ALICE, BOB]}
    tool = function_tool("Mail.", {"type": "object", "properties": {"to": to}})
    answers = await gateway_for("openai-chat").send("/v1/chat/completions", chat(tools=[tool]))
    sent = upstream_body(answers[1])["tools"][0]["function"]["parameters"]
    assert sent["properties"]["to"]["examples"] == ["<EMAIL>", "<EMAIL>"]


MASKS = st.sampled_from(["<EMAIL>", "<EMAIL>#2", "x", "y#3", "<EMAIL>#3"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(MASKS | st.integers(0, 3), unique=True, max_size=8),
    writes=st.lists(st.tuples(st.integers(0, 7), MASKS), max_size=12),
)
def test_whatever_is_written_a_distinct_enum_stays_distinct(
    values: list[Any], writes: list[tuple[int, str]]
) -> None:
    enum = list(values)
    holder = DistinctEnum(enum)
    for index, text in writes:
        if index < len(enum) and isinstance(enum[index], str):
            holder[index] = text
            assert enum[index] == text or enum[index].startswith(f"{text}#")
    strings = [value for value in enum if isinstance(value, str)]
    assert len(strings) == len(set(strings)), enum
    assert len(enum) == len(values)


# --- entries that are objects or arrays ----------------------------------------------------
# JSON Schema allows any JSON value in an enum. Their strings and keys are masked one by
# one, and two entries masked alike were two equal values: OpenAI's strict mode refused
# the schema (the mock does, comparing entries as JSON values). Now the string or key
# whose mask made an entry equal to another gets the suffix.


def strict_output(enum: list[Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"to": {"enum": enum}},
              "required": ["to"], "additionalProperties": False}  # fmt: skip
    return {"type": "json_schema", "json_schema": {"name": "a", "strict": True, "schema": schema}}


async def test_object_and_array_entries_masked_alike_stay_distinct() -> None:
    enum = [{"to": ALICE, "cc": "ops"}, {"cc": "ops", "to": BOB}, [CAROL], [ALICE],
            {ALICE: 1}, {BOB: 1}, "x"]  # fmt: skip
    output = strict_output(enum)
    answers = await gateway_for("openai-chat").send(
        "/v1/chat/completions", chat(response_format=output)
    )
    sent = upstream_body(answers[1])["response_format"]
    assert strict_schema_error(sent) is None  # what the mock (and OpenAI) would refuse
    assert enum_of(sent["json_schema"]["schema"]) == [
        {"to": "<EMAIL>", "cc": "ops"}, {"cc": "ops", "to": "<EMAIL>#2"},
        ["<EMAIL>"], ["<EMAIL>#2"], {"<EMAIL>": 1}, {"<EMAIL>#2": 1}, "x",
    ]  # fmt: skip
    # Before the fix, the schema the provider got was refused.
    output["json_schema"]["schema"]["properties"]["to"]["enum"] = [
        {"to": "<EMAIL>", "cc": "ops"}, {"cc": "ops", "to": "<EMAIL>"}]  # fmt: skip
    assert strict_schema_error(output) is not None


async def test_entries_that_differ_elsewhere_take_no_suffix() -> None:
    enum = [{"to": ALICE, "n": 1}, {"to": BOB, "n": 2}, [ALICE, "a"], [BOB, "b"]]
    answers = await gateway_for("openai-chat").send(
        "/v1/chat/completions", chat(response_format=strict_output(enum))
    )
    sent = upstream_body(answers[1])["response_format"]["json_schema"]["schema"]
    assert enum_of(sent) == [{"to": "<EMAIL>", "n": 1}, {"to": "<EMAIL>", "n": 2},
                             ["<EMAIL>", "a"], ["<EMAIL>", "b"]]  # fmt: skip


async def test_a_converse_json_text_schema_keeps_object_entries_distinct(
    services: Services,
) -> None:
    schema_text = orjson.dumps(strict_output([{"to": ALICE}, {"to": BOB}])["json_schema"]["schema"])
    output = {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
        "name": "answer", "schema": schema_text.decode()}}}}  # fmt: skip
    answers = await through_converse(converse(outputConfig=output), services)
    written = upstream_body(answers[1])["outputConfig"]["textFormat"]["structure"]
    enum = enum_of(orjson.loads(written["jsonSchema"]["schema"]))
    assert enum == [{"to": "<EMAIL>"}, {"to": "<EMAIL>#2"}]


async def test_a_webhook_masking_object_entries_alike_leaves_them_distinct() -> None:
    def mask(call: dict[str, Any]) -> dict[str, Any]:
        entries = [
            {**entry, "content": "[name]" if entry["content"] in ("Alice", "Bob") else
             entry["content"]}
            for entry in call["body"]["messages"]
        ]  # fmt: skip
        return {"action": {"body": {"messages": entries}}}

    hook = Hook(mask)
    async with serving(hook.handle) as port:
        guardrails = {
            "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port}],
            "policies": [
                {"name": "hooked", "request": [{"name": "hook-guard", "webhook": "hook"}]}
            ],
        }
        gate = Gateway(config_with(guardrails, {"openai-chat": {"guardrails": "hooked"}}))
        output = strict_output([{"who": "Alice"}, {"who": "Bob"}, {"who": "Carl"}])
        answers = await gate.send("/v1/chat/completions", chat(response_format=output))
    sent = upstream_body(answers[1])["response_format"]
    assert enum_of(sent["json_schema"]["schema"]) == [
        {"who": "[name]"}, {"who": "[name]#2"}, {"who": "Carl"}]  # fmt: skip


ENTRIES = st.sampled_from(["<EMAIL>", "<EMAIL>#2", "x"]).map(lambda s: {"to": s}) | MASKS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(ENTRIES, max_size=8).map(
        lambda found: list({orjson.dumps(v): v for v in found}.values())
    ),
    writes=st.lists(st.tuples(st.integers(0, 7), MASKS), max_size=12),
)
def test_whatever_is_written_inside_entries_an_enum_stays_distinct(
    values: list[Any], writes: list[tuple[int, str]]
) -> None:
    enum = copy.deepcopy(values)
    holder = DistinctEnum(enum)
    for index, text in writes:
        if index >= len(enum):
            continue
        if isinstance(enum[index], str):
            holder[index] = text
        else:
            holder.inside(index, enum[index])["to"] = text
    found = [orjson.dumps(value) for value in enum]
    assert len(found) == len(set(found)), enum
    assert len(enum) == len(values)

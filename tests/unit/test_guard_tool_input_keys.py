"""Guards read the parameter names of an Anthropic tool call's ``input``, through the processor.

Request guards read each string of a ``tool_use`` block's ``input`` (and of
``server_tool_use`` and ``mcp_tool_use``) but not its keys, the tool's parameter
names, while the keys of OpenAI arguments are read: a key put in a parameter name
(``{"sk-...": "x"}``) was refused on an OpenAI body and reached an Anthropic provider
past the same ``REJECT`` guard, and a buffered Anthropic answer carried one to the
client. Keys are now read at every depth the strings are: a ``REJECT`` refuses, a
``MASK`` renames the key where it stands, keeping its value and the order of the
object's members; a masked name already taken gets a suffix (``#2``), so no member
is lost.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.guardrails.content import request_slots
from extproc.testing import response_body, response_headers
from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_flow import Gateway, immediate, upstream_body
from tests.unit.test_guardrail_review import Hook, serving

KEY_MESSAGE = "API keys must not be sent to a model."
# What a REJECT guard for sk-[A-Za-z0-9]{32,64} knows: 40 characters after "sk-".
KEY = "sk-" + "a1B2c3D4e5" * 4
KEY_GUARD = {"name": "api-keys", "patterns": [r"sk-[A-Za-z0-9]{32,64}"], "message": KEY_MESSAGE}
PII = {"name": "pii", "builtins": ["EMAIL"], "action": "mask"}
POLICIES = {
    "policies": [
        {"name": "no-keys", "request": [KEY_GUARD]},
        {"name": "pii", "request": [PII]},
        {"name": "answers",
         "response": [{**KEY_GUARD, "name": "api-keys-out"}, {**PII, "name": "pii-out"}]},
    ]
}  # fmt: skip
MESSAGES_ROUTE = "anthropic-messages"


def history(tool_input: Any, kind: str = "tool_use") -> bytes:
    """An Anthropic conversation whose assistant turn called a tool with ``tool_input``."""
    use = {"type": kind, "id": "toolu_1", "name": "send_email", "input": tool_input}
    return orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "Email the report to my manager."},
                {"role": "assistant", "content": [{"type": "text", "text": "Sending."}, use]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sent"}]},
            ],
        }
    )  # fmt: skip


def gateway(policy: str) -> Gateway:
    return Gateway(config_with(POLICIES, {MESSAGES_ROUTE: {"guardrails": policy}}))


async def sent_input(policy: str, tool_input: Any) -> Any:
    """The ``input`` the provider receives for this tool call (asserting it was sent)."""
    body = history(tool_input)
    answers = await gateway(policy).send("/v1/messages", body)
    assert answers[1].HasField("request_body"), "refused: nothing reached the provider"
    # The gateway's rewrite, or the client's body when nothing changed.
    sent = upstream_body(answers[1]) if body_mutated(answers[1]) else orjson.loads(body)
    return sent["messages"][1]["content"][1]["input"]


def body_mutated(answer: ext.ProcessingResponse) -> bool:
    return bool(answer.request_body.response.HasField("body_mutation"))


# --- a key in a parameter name is refused ---------------------------------------------------


@pytest.mark.parametrize(
    "tool_input",
    [
        {KEY: "x"},
        {"headers": {KEY: "x"}},
        {"headers": [{"name": "x-trace"}, {KEY: True}]},
        {"a": [[{"b": {KEY: None}}]]},
    ],
    ids=["top", "nested-object", "object-in-array", "deep"],
)
async def test_a_key_written_as_a_parameter_name_is_refused(tool_input: Any) -> None:
    gate = gateway("no-keys")
    answers = await gate.send("/v1/messages", history(tool_input))
    assert answers[-1].HasField("immediate_response"), "the key reached the provider"
    status, error = immediate(answers[-1])
    assert status == 403
    assert error == {"type": "error", "error": {"type": "permission_error", "message": KEY_MESSAGE}}
    assert gate.log()["guardrails"] == [
        {"guard": "api-keys", "phase": "request", "action": "reject"}
    ]
    assert KEY not in orjson.dumps(gate.log()).decode()


@pytest.mark.parametrize("kind", ["server_tool_use", "mcp_tool_use"])
async def test_a_key_in_a_parameter_name_of_other_tool_calls_is_refused(kind: str) -> None:
    answers = await gateway("no-keys").send("/v1/messages", history({KEY: "x"}, kind))
    assert immediate(answers[-1])[0] == 403


# --- a masked parameter name is renamed where it stands ---------------------------------------


async def test_a_masked_parameter_name_is_renamed_in_place() -> None:
    tool_input = {"to": "boss", "jane@example.com": "reader", "n": 1, "z": [1]}
    sent = await sent_input("pii", tool_input)
    # The other members keep their order, and the renamed one its place and its value.
    assert list(sent.items()) == [("to", "boss"), ("<EMAIL>", "reader"), ("n", 1), ("z", [1])]


async def test_a_renamed_parameter_keeps_its_value_which_is_read_too() -> None:
    tool_input = {
        "jane@example.com": "mail jane@example.com",
        "ops@example.com": {"cc": "bob@example.com", "bob@example.com": [{"x@example.com": 1}]},
    }
    assert await sent_input("pii", tool_input) == {
        "<EMAIL>": "mail <EMAIL>",
        "<EMAIL>#2": {"cc": "<EMAIL>", "<EMAIL>": [{"<EMAIL>": 1}]},
    }


@pytest.mark.parametrize(
    ("tool_input", "masked"),
    [
        # Two names masked alike: both members stay, the second suffixed.
        ({"alice@example.com": "to", "bob@example.com": "cc"},
         [("<EMAIL>", "to"), ("<EMAIL>#2", "cc")]),
        # The masked name is one the client wrote.
        ({"<EMAIL>": 1, "jane@example.com": 2}, [("<EMAIL>", 1), ("<EMAIL>#2", 2)]),
        ({"jane@example.com": 1, "<EMAIL>": 2}, [("<EMAIL>#2", 1), ("<EMAIL>", 2)]),
        # A suffix the client wrote is skipped.
        ({"a@example.com": 1, "<EMAIL>#2": 2, "b@example.com": 3},
         [("<EMAIL>", 1), ("<EMAIL>#2", 2), ("<EMAIL>#3", 3)]),
    ],
    ids=["alike", "taken-before", "taken-after", "suffix-taken"],
)  # fmt: skip
async def test_a_masked_name_already_taken_gets_a_suffix(
    tool_input: dict[str, Any], masked: list[tuple[str, Any]]
) -> None:
    assert list((await sent_input("pii", tool_input)).items()) == masked


async def test_many_masked_names_in_one_object_are_all_renamed_in_order() -> None:
    # A client may send thousands: each rename is O(1), the object is not rebuilt each time.
    tool_input = {f"u{i}@example.com" if i % 2 else f"p{i}": i for i in range(20_000)}
    sent = await sent_input("pii", tool_input)
    expected = [("<EMAIL>" if i == 1 else f"<EMAIL>#{(i + 1) // 2}", i) if i % 2
                else (f"p{i}", i) for i in range(20_000)]  # fmt: skip
    assert list(sent.items()) == expected


async def test_a_masked_name_is_recorded_as_a_mask() -> None:
    gate = gateway("pii")
    await gate.send("/v1/messages", history({"jane@example.com": "x"}))
    assert gate.log()["guardrails"] == [{"guard": "pii", "phase": "request", "action": "mask"}]


# --- buffered answers -----------------------------------------------------------------------


def answer_with(tool_input: Any) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-latest",
            "content": [
                {"type": "text", "text": "Sending."},
                {"type": "tool_use", "id": "toolu_1", "name": "send_email", "input": tool_input},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 5, "output_tokens": 9},
        }
    )


async def answered(gate: Gateway, tool_input: Any) -> list[Any]:
    return await gate.send(
        "/v1/messages",
        history({}),
        response_headers(200, {"content-type": "application/json"}),
        response_body(answer_with(tool_input)),
    )


async def test_an_answer_carrying_a_key_in_a_parameter_name_is_refused() -> None:
    gate = gateway("answers")
    answers = await answered(gate, {"config": {KEY: "x"}})
    last = answers[-1]
    assert last.HasField("immediate_response"), "the key reached the client"
    status, error = immediate(last)
    assert status == 403 and error["error"]["message"] == KEY_MESSAGE
    assert KEY.encode() not in last.immediate_response.body
    assert gate.log()["completion_tokens"] == 9  # the provider produced it: still charged


async def test_an_answers_masked_parameter_name_is_renamed_in_place() -> None:
    tool_input = {"to": "x", "jane@example.com": "cc", "n": 2}
    answers = await answered(gateway("answers"), tool_input)
    # The body the client gets: the gateway's rewrite, or the provider's unchanged.
    shown = orjson.loads(
        answers[3].response_body.response.body_mutation.body or answer_with(tool_input)
    )
    assert list(shown["content"][1]["input"].items()) == [("to", "x"), ("<EMAIL>", "cc"), ("n", 2)]


# --- webhooks see the names, and may mask them --------------------------------------------------


def hooked(port: int, *request: dict[str, Any]) -> Any:
    guardrails = {
        "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port}],
        "policies": [
            {"name": "hooked", "request": [{"name": "hook-guard", "webhook": "hook"}, *request]}
        ],
    }
    return config_with(guardrails, {MESSAGES_ROUTE: {"guardrails": "hooked"}})


def replacing(word: str, by: str) -> Any:
    """A webhook answering a MaskAction that replaces ``word`` in every entry."""

    def mask(call: dict[str, Any]) -> dict[str, Any]:
        messages = call["body"]["messages"]
        masked = [{**m, "content": m["content"].replace(word, by)} for m in messages]
        return {"action": {"body": {"messages": masked}, "reason": "names"}}

    return mask


async def test_a_request_webhook_sees_each_name_before_its_value_and_may_mask_it() -> None:
    hook = Hook(replacing("project-falcon", "[codename]"))
    async with serving(hook.handle) as port:
        gate = Gateway(hooked(port))
        tool_input = {"to": "boss", "project-falcon": {"budget": "12"}}
        answers = await gate.send("/v1/messages", history(tool_input))
    seen = [m["content"] for m in hook.calls[0]["body"]["messages"] if m["role"] == "assistant"]
    # The assistant turn's text, the call's name, then the input's names and strings in
    # document order.
    assert seen == ["Sending.", "send_email", "to", "boss", "project-falcon", "budget", "12"]
    sent = upstream_body(answers[1])["messages"][1]["content"][1]["input"]
    assert list(sent.items()) == [("to", "boss"), ("[codename]", {"budget": "12"})]


async def test_names_masked_by_a_webhook_then_by_a_matcher_keep_their_places() -> None:
    hook = Hook(replacing("project-falcon", "[codename]"))
    async with serving(hook.handle) as port:
        gate = Gateway(hooked(port, PII))
        tool_input = {"a": 0, "project-falcon": 1, "x": 2, "jane@example.com": 3, "y": 4}
        answers = await gate.send("/v1/messages", history(tool_input))
    sent = upstream_body(answers[1])["messages"][1]["content"][1]["input"]
    assert list(sent.items()) == [("a", 0), ("[codename]", 1), ("x", 2), ("<EMAIL>", 3), ("y", 4)]


# --- the slots on their own: any object, any renames -------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Few letters, so that masked names often collide with others and with their suffixes.
names = st.text(alphabet="ab#2", max_size=3)
values = st.recursive(
    st.none() | st.integers(0, 9) | names,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=5),
    max_leaves=15,
)


def mask_a(text: str) -> str:
    return text.replace("a", "b")


def one_pass(tool_input: Any, change: Any) -> Any:
    """What the stage does to the ``input``: each slot read in order, written if changed."""
    block = {"type": "tool_use", "id": "t", "name": "f", "input": tool_input}
    body = {"messages": [{"role": "assistant", "content": [block]}]}
    for slot in request_slots(body):
        changed = change(slot.text)
        if changed != slot.text:
            slot.write(changed)
    return block["input"]


def expected(value: Any, change: Any) -> Any:
    """The spec: each string changed; a changed name taken by another member gets the
    first ``#n`` (from 2, counting on per name) no member has, in document order."""
    if isinstance(value, list):
        return [expected(item, change) for item in value]
    if not isinstance(value, dict):
        return change(value) if isinstance(value, str) else value
    order = list(value)
    taken = set(order)
    counts: dict[str, int] = {}
    for index, name in enumerate(order):
        wanted = change(name)
        if wanted == name:
            continue
        given = wanted
        if wanted in taken:
            count = counts.get(wanted, 1)
            while True:
                count += 1
                given = f"{wanted}#{count}"
                if given == name or given not in taken:
                    break
            counts[wanted] = count
        taken.discard(name)
        taken.add(given)
        order[index] = given
    return {new: expected(value[old], change) for new, old in zip(order, value, strict=True)}


def ordered(value: Any) -> Any:
    """``value`` with each object as its list of members, so that order counts."""
    if isinstance(value, dict):
        return [(name, ordered(item)) for name, item in value.items()]
    if isinstance(value, list):
        return [ordered(item) for item in value]
    return value


@FUZZ
@given(st.dictionaries(names, values, max_size=6))
def test_a_pass_renames_every_changed_name_in_place(tool_input: dict[str, Any]) -> None:
    want = ordered(expected(copy.deepcopy(tool_input), mask_a))
    assert ordered(one_pass(tool_input, mask_a)) == want


def unmask_b(text: str) -> str:
    # Its names never collide with the first pass's: they hold an "a", those do not.
    return text.replace("b", "a#")


@FUZZ
@given(st.dictionaries(names, values, max_size=6))
def test_a_second_pass_leaves_every_name_in_its_place(tool_input: dict[str, Any]) -> None:
    # A webhook's masks, then the matchers', over the same slots.
    want = ordered(expected(expected(copy.deepcopy(tool_input), mask_a), unmask_b))
    block = {"type": "tool_use", "id": "t", "name": "f", "input": tool_input}
    slots = request_slots({"messages": [{"role": "assistant", "content": [block]}]})
    for change in (mask_a, unmask_b):
        for slot in slots:
            if change(slot.text) != slot.text:
                slot.write(change(slot.text))
    assert ordered(tool_input) == want


@FUZZ
@given(
    st.lists(names, min_size=1, max_size=8, unique=True),
    st.lists(st.tuples(st.integers(0, 7), names | st.none()), max_size=12),
)
def test_names_read_and_renamed_out_of_order_stay_right(
    start: list[str], steps: list[tuple[int, str | None]]
) -> None:
    tool_input = {name: index for index, name in enumerate(start)}
    block = {"type": "tool_use", "id": "t", "name": "f", "input": tool_input}
    slots = request_slots({"messages": [{"role": "assistant", "content": [block]}]})
    # The values are numbers: every slot but the call's name is a key.
    keys = [slot for slot in slots if slot.fixed is None]
    logical = list(start)
    for index, name in steps:
        slot = keys[index % len(keys)]
        if name is None:
            assert slot.text == logical[index % len(keys)]
            continue
        slot.write(name)
        logical[index % len(keys)] = slot.text
        assert slot.text == name or slot.text.startswith(f"{name}#")
    assert len(set(logical)) == len(logical), "two members merged"
    # The stage's pass: every name read, in order.
    assert [slot.text for slot in keys] == logical
    assert list(tool_input.items()) == [(name, index) for index, name in enumerate(logical)]


class CountingDict(dict[str, Any]):
    """A dict that counts the members taken out of it (each rename or move is one)."""

    pops = 0

    def pop(self, *args: Any) -> Any:
        CountingDict.pops += 1
        return super().pop(*args)


def test_renaming_every_name_of_an_object_moves_each_member_at_most_twice() -> None:
    # Rebuilding the object at each rename would move n * n members: a client sending
    # an object of 50 000 masked names would hold the event loop for minutes.
    count = 5_000
    tool_input = CountingDict((f"u{i}@example.com", i) for i in range(count))
    CountingDict.pops = 0
    masked = one_pass(tool_input, lambda text: text.replace("@example.com", ""))
    assert list(masked.items()) == [(f"u{i}", i) for i in range(count)]
    assert CountingDict.pops <= 2 * count

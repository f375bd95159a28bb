"""What the gateway reads of a call to Gemini's native API: the model and operation its
path names, the body's shape, the prompt estimate, the completion allowance and the hard
cap that lowers it, in either of the spellings Google's REST API accepts."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.errors import BadRequestError, GatewayError, NotFoundError
from extproc.gemini_api import (
    COUNT_TOKENS,
    GENERATE_CONTENT,
    STREAM_GENERATE_CONTENT,
    cap_completion,
    check_body,
    choices,
    completion_allowance,
    estimate_prompt_tokens,
    model_and_operation,
    streams,
)
from extproc.quota.estimate import PER_MESSAGE_OVERHEAD

FLASH = "gemini-2.5-flash"
CONTENTS = [{"role": "user", "parts": [{"text": "Hello there"}]}]
OPERATIONS = (GENERATE_CONTENT, STREAM_GENERATE_CONTENT, COUNT_TOKENS)


# --- the path ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        (f"/{FLASH}:generateContent", (FLASH, GENERATE_CONTENT)),
        (f"/{FLASH}:streamGenerateContent", (FLASH, STREAM_GENERATE_CONTENT)),
        (f"/{FLASH}:countTokens", (FLASH, COUNT_TOKENS)),
        # The SDKs may encode the colon that names the operation.
        (f"/{FLASH}%3AstreamGenerateContent", (FLASH, STREAM_GENERATE_CONTENT)),
        # A model name the gateway knows with a slash in it comes encoded, and is decoded once.
        (f"/{quote('team/flash', safe='')}:generateContent", ("team/flash", GENERATE_CONTENT)),
        ("/a%2525b:generateContent", ("a%25b", GENERATE_CONTENT)),
    ],
)  # fmt: skip
def test_the_path_names_the_model_and_the_operation(rest: str, expected: tuple[str, str]) -> None:
    assert model_and_operation(rest) == expected


@pytest.mark.parametrize(
    "rest",
    [
        f"/{FLASH}:embedContent",
        f"/{FLASH}:batchEmbedContents",
        f"/{FLASH}",
        f"/{FLASH}:",
        ":generateContent",
        "/:generateContent",
        "/%3AgenerateContent",
        "",
        "/",
        f"/{FLASH}:GenerateContent",
        f"/tunedModels/{FLASH}:generateContent",
        f"/{FLASH}:generateContent/",
    ],
)
def test_an_unknown_or_missing_operation_or_model_is_a_404_naming_what_is_served(
    rest: str,
) -> None:
    with pytest.raises(NotFoundError) as refused:
        model_and_operation(rest)
    assert refused.value.status == 404
    for served in OPERATIONS:
        assert served in refused.value.message


@settings(max_examples=500)
@given(
    st.text(max_size=60)
    | st.builds("/{}:{}".format, st.text(max_size=20), st.sampled_from(OPERATIONS))
    | st.builds("/{}%3A{}".format, st.text(max_size=20), st.sampled_from(OPERATIONS))
)
def test_no_path_raises_anything_but_a_404(rest: str) -> None:
    try:
        model, operation = model_and_operation(rest)
    except NotFoundError:
        return
    assert model and operation in OPERATIONS


def test_only_stream_generate_content_streams() -> None:
    assert streams(STREAM_GENERATE_CONTENT) is True
    assert streams(GENERATE_CONTENT) is False
    assert streams(COUNT_TOKENS) is False


# --- the body's shape ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "contents"),
        ({"contents": {"role": "user"}}, "contents"),
        ({"contents": "hello"}, "contents"),
        ({"contents": ["hello"]}, "contents[0]"),
        ({"contents": [*CONTENTS, {"role": "user", "parts": "hi"}]}, "contents[1].parts"),
        ({"contents": [{"role": "user", "parts": ["hi"]}]}, "contents[0].parts[0]"),
        ({"contents": CONTENTS, "generationConfig": []}, "generationConfig"),
        (
            {"contents": CONTENTS, "generationConfig": {"maxOutputTokens": 0}},
            "generationConfig.maxOutputTokens",
        ),
        (
            {"contents": CONTENTS, "generationConfig": {"maxOutputTokens": True}},
            "generationConfig.maxOutputTokens",
        ),
        (
            {"contents": CONTENTS, "generationConfig": {"maxOutputTokens": 1.5}},
            "generationConfig.maxOutputTokens",
        ),
        (
            {"contents": CONTENTS, "generationConfig": {"candidateCount": -1}},
            "generationConfig.candidateCount",
        ),
        # The snake_case spelling is checked too, and named as the body spells it.
        (
            {"contents": CONTENTS, "generation_config": {"max_output_tokens": "lots"}},
            "generation_config.max_output_tokens",
        ),
        (
            {"contents": CONTENTS, "generation_config": {"candidate_count": 0}},
            "generation_config.candidate_count",
        ),
    ],
)  # fmt: skip
def test_a_malformed_body_is_refused_naming_its_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as refused:
        check_body(body, GENERATE_CONTENT)
    assert refused.value.status == 400
    assert refused.value.param == param
    assert param in refused.value.message


def test_a_well_formed_body_passes_unknown_fields_and_all() -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "What is the weather?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {}}}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"maxOutputTokens": 100, "candidateCount": 2, "seed": 4},
        "safetySettings": [],
        "someFieldGoogleAddsLater": {"x": 1},
    }
    check_body(body, GENERATE_CONTENT)
    check_body(body, STREAM_GENERATE_CONTENT)
    snake = {"contents": CONTENTS, "generation_config": {"max_output_tokens": 5}}
    check_body(snake, GENERATE_CONTENT)


def test_a_content_without_parts_is_left_to_google() -> None:
    check_body({"contents": [{"role": "user"}]}, GENERATE_CONTENT)


def test_count_tokens_takes_contents_or_a_whole_generate_content_request() -> None:
    check_body({"contents": CONTENTS}, COUNT_TOKENS)
    request = {"model": f"models/{FLASH}", "contents": CONTENTS}
    check_body({"generateContentRequest": request}, COUNT_TOKENS)
    check_body({"generate_content_request": request}, COUNT_TOKENS)
    with pytest.raises(BadRequestError) as refused:
        check_body({}, COUNT_TOKENS)
    assert refused.value.param == "contents"
    with pytest.raises(BadRequestError) as refused:
        check_body({"generateContentRequest": {"contents": "hi"}}, COUNT_TOKENS)
    assert refused.value.param == "generateContentRequest.contents"
    with pytest.raises(BadRequestError) as refused:
        check_body({"generateContentRequest": "hi"}, COUNT_TOKENS)
    assert refused.value.param == "generateContentRequest"
    with pytest.raises(BadRequestError) as refused:
        check_body({"contents": [{"parts": {"text": "hi"}}]}, COUNT_TOKENS)
    assert refused.value.param == "contents[0].parts"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=15,
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "contents": st.lists(
            st.fixed_dictionaries({}, optional={"role": json_values, "parts": json_values})
            | json_values,
            max_size=3,
        )
        | json_values,
        "systemInstruction": json_values,
        "system_instruction": json_values,
        "tools": json_values,
        "generationConfig": st.fixed_dictionaries(
            {},
            optional={
                "maxOutputTokens": json_values,
                "candidateCount": json_values,
                "thinkingConfig": json_values,
            },
        )
        | json_values,
        "generation_config": json_values,
    },
)
bodies = request_like | request_like.map(lambda inner: {"generateContentRequest": inner})


@settings(max_examples=400)
@given(bodies, st.sampled_from(OPERATIONS))
def test_no_body_raises_anything_but_a_gateway_error(body: dict[str, Any], operation: str) -> None:
    try:
        check_body(body, operation)
    except GatewayError as refused:
        assert refused.status == 400
        return
    # What passes the check, the quota and the hard cap can read.
    assert estimate_prompt_tokens(body) >= 0
    assert completion_allowance(body, 1000) >= 1
    assert choices(body) >= 1
    cap_completion(body, 10)
    assert completion_allowance(body, 1000) <= 10 * choices(body)


# --- the prompt estimate -------------------------------------------------------------------


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "parts": list(parts)}


def test_the_estimate_counts_each_content_text_and_its_overhead() -> None:
    one = estimate_prompt_tokens({"contents": [user({"text": "x" * 400})]})
    assert one == 100 + PER_MESSAGE_OVERHEAD
    two = estimate_prompt_tokens(
        {"contents": [user({"text": "x" * 400}), user({"text": "y" * 40})]}
    )
    assert two == one + 10 + PER_MESSAGE_OVERHEAD


@pytest.mark.parametrize("key", ["systemInstruction", "system_instruction"])
def test_the_estimate_counts_the_system_instruction(key: str) -> None:
    bare = estimate_prompt_tokens({"contents": CONTENTS})
    system = {key: {"parts": [{"text": "s" * 400}]}}
    assert estimate_prompt_tokens({"contents": CONTENTS, **system}) == bare + 100


def test_the_estimate_counts_function_calls_results_code_and_tool_definitions() -> None:
    bare = estimate_prompt_tokens({"contents": [user()]})
    call = {"functionCall": {"name": "lookup", "args": {"query": "q" * 400}}}
    assert estimate_prompt_tokens({"contents": [user(call)]}) >= bare + 100
    snake_call = {"function_call": {"name": "lookup", "args": {"query": "q" * 400}}}
    assert estimate_prompt_tokens({"contents": [user(snake_call)]}) >= bare + 100
    result = {"functionResponse": {"name": "lookup", "response": {"rows": "r" * 800}}}
    assert estimate_prompt_tokens({"contents": [user(result)]}) >= bare + 200
    code = {"executableCode": {"language": "PYTHON", "code": "c" * 400}}
    assert estimate_prompt_tokens({"contents": [user(code)]}) == bare + 100
    output = {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "o" * 400}}
    assert estimate_prompt_tokens({"contents": [user(output)]}) == bare + 100
    declaration = {"name": "lookup", "description": "d" * 400, "parameters": {"type": "object"}}
    tools = [{"functionDeclarations": [declaration]}]
    assert estimate_prompt_tokens({"contents": [user()], "tools": tools}) >= bare + 100


def test_bytes_and_files_count_nothing() -> None:
    bare = estimate_prompt_tokens({"contents": [user({"text": "describe this"})]})
    image = {"inlineData": {"mimeType": "image/png", "data": "A" * 40_000}}
    document = {"fileData": {"mimeType": "application/pdf", "fileUri": "gs://b/" + "f" * 400}}
    with_both = {"contents": [user({"text": "describe this"}, image, document)]}
    assert estimate_prompt_tokens(with_both) == bare


def test_count_tokens_bodies_are_estimated_in_either_form() -> None:
    contents = [user({"text": "x" * 400})]
    direct = estimate_prompt_tokens({"contents": contents})
    system = {"parts": [{"text": "s" * 400}]}
    request = {"model": f"models/{FLASH}", "contents": contents, "systemInstruction": system}
    assert estimate_prompt_tokens({"generateContentRequest": request}) == direct + 100


def test_a_malformed_body_estimates_what_it_can() -> None:
    odd = {
        "contents": [None, {"parts": [{"text": 5}, "x"]}, {"parts": "text"}],
        "tools": "no",
        "systemInstruction": "be brief",
    }
    assert estimate_prompt_tokens(odd) >= 0


# --- the completion allowance and the hard cap ---------------------------------------------


def test_the_allowance_is_max_output_tokens_times_candidates() -> None:
    assert completion_allowance({"contents": CONTENTS}, 4096) == 4096
    config = {"maxOutputTokens": 500}
    assert completion_allowance({"contents": CONTENTS, "generationConfig": config}, 4096) == 500
    config = {"maxOutputTokens": 500, "candidateCount": 3}
    assert completion_allowance({"contents": CONTENTS, "generationConfig": config}, 4096) == 1500
    snake = {"generation_config": {"candidate_count": 2}}
    assert completion_allowance({"contents": CONTENTS, **snake}, 4096) == 8192
    assert choices({"contents": CONTENTS, **snake}) == 2
    assert choices({"contents": CONTENTS}) == 1


def test_camel_case_is_read_before_snake_case() -> None:
    body = {
        "generationConfig": {"maxOutputTokens": 100},
        "generation_config": {"max_output_tokens": 900},
    }
    assert completion_allowance(body, 4096) == 100
    inside = {"generationConfig": {"maxOutputTokens": 100, "max_output_tokens": 900}}
    assert completion_allowance(inside, 4096) == 100


def test_a_cap_lowers_or_sets_max_output_tokens() -> None:
    body: dict[str, Any] = {"contents": CONTENTS, "generationConfig": {"maxOutputTokens": 500}}
    assert cap_completion(body, 800) is False  # already within the cap
    assert cap_completion(body, 500) is False
    assert body["generationConfig"] == {"maxOutputTokens": 500}
    assert cap_completion(body, 100) is True
    assert body["generationConfig"] == {"maxOutputTokens": 100}

    bare: dict[str, Any] = {"contents": CONTENTS}
    assert cap_completion(bare, 64) is True
    assert bare["generationConfig"] == {"maxOutputTokens": 64}


def test_a_cap_keeps_the_bodys_spelling() -> None:
    body: dict[str, Any] = {"contents": CONTENTS, "generation_config": {"temperature": 0.5}}
    assert cap_completion(body, 64) is True
    assert body == {
        "contents": CONTENTS,
        "generation_config": {"temperature": 0.5, "max_output_tokens": 64},
    }
    spelled: dict[str, Any] = {"generation_config": {"max_output_tokens": 900}}
    assert cap_completion(spelled, 64) is True
    assert spelled == {"generation_config": {"max_output_tokens": 64}}


def test_a_cap_replaces_a_malformed_allowance() -> None:
    body: dict[str, Any] = {"generationConfig": {"maxOutputTokens": 0}}
    assert cap_completion(body, 64) is True
    assert body["generationConfig"]["maxOutputTokens"] == 64


@pytest.mark.parametrize("budget", [5000, 100, 50, 0, -1])
def test_a_cap_leaves_the_thinking_budget_to_max_output_tokens(budget: int) -> None:
    # Gemini counts its thinking in maxOutputTokens, which bounds it; a budget written
    # lower could be one the model refuses (2.5 Pro takes 128 at the least).
    config = {"maxOutputTokens": 8000, "thinkingConfig": {"thinkingBudget": budget}}
    body: dict[str, Any] = {"contents": CONTENTS, "generationConfig": config}
    assert cap_completion(body, 100) is True
    assert body["generationConfig"]["maxOutputTokens"] == 100
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": budget}


def test_a_body_within_the_cap_is_left_whole_thinking_budget_and_all() -> None:
    config = {"maxOutputTokens": 50, "thinkingConfig": {"thinkingBudget": 5000}}
    body: dict[str, Any] = {"contents": CONTENTS, "generationConfig": config}
    assert cap_completion(body, 100) is False
    assert body["generationConfig"] == {
        "maxOutputTokens": 50,
        "thinkingConfig": {"thinkingBudget": 5000},
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "contents": [],
                "generationConfig": {"maxOutputTokens": 10},
                "generation_config": {"max_output_tokens": 60000},
            },
            "generationConfig",
        ),
        (
            {"contents": [], "generationConfig": {"maxOutputTokens": 10, "max_output_tokens": 9}},
            "generationConfig.maxOutputTokens",
        ),
        (
            {"contents": [], "generation_config": {"candidateCount": 1, "candidate_count": 8}},
            "generation_config.candidateCount",
        ),
        (
            {
                "contents": [],
                "systemInstruction": {"parts": [{"text": "a"}]},
                "system_instruction": {"parts": [{"text": "b" * 9000}]},
            },
            "systemInstruction",
        ),
    ],
)
def test_a_field_the_quota_reads_given_in_both_spellings_is_refused(
    body: dict[str, Any], param: str
) -> None:
    # The quota reads camelCase first: a large allowance in the other spelling would go
    # past the reservation and the hard cap, were Google to read that one.
    with pytest.raises(BadRequestError) as refused:
        check_body(body, GENERATE_CONTENT)
    assert (refused.value.param, refused.value.code) == (param, "ambiguous_body")


def test_a_count_wrapping_its_request_in_both_spellings_is_refused() -> None:
    request = {"contents": []}
    body = {"generateContentRequest": request, "generate_content_request": request}
    with pytest.raises(BadRequestError) as refused:
        check_body(body, COUNT_TOKENS)
    assert refused.value.param == "generateContentRequest"

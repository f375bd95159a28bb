"""A key in the request's path, as Envoy's access log and span record them.

The gateway's log line showed a segment of the path holding a credential as
``[redacted]``, but Envoy's access log ``path`` and the span's ``http.url`` kept the
path as the client sent it, key and all. Now the gateway names the path as it records
it in its first answer (its ``io.aigw`` metadata's ``path``, again in a later answer
when it hides more), which Envoy prints; a path with a well-known key shape is
``/[redacted]`` whoever looked: the gateway (``envoy_request_record``), or Envoy's
own RE2 for a request the gateway never answered (``envoy_paths.ENVOY_PATH``).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from extproc.auth import credential_shapes
from extproc.auth.stored_keys.records import SECRET_PREFIX
from extproc.config import GatewayConfig
from extproc.envoy_paths import ENVOY_PATH, PATH_METADATA_KEY
from extproc.envoy_request_record import holds_key_shape
from extproc.headers import METADATA_NAMESPACE
from tests.unit.test_model_credentials import (
    CLAUDE_ANSWER,
    GATEWAY,
    OPENAI_KEY,
    OTHER_TEAMS_KEY,
    OWN_KEY,
    chat,
    send,
)

GOOGLE_KEY = "AIzaSyD4x9Q2wE7rT1yU6iO3pA8sD5fG0hJ2kLz"


def recorded_paths(answers: list[Any]) -> list[str]:
    """The path each answer told Envoy to record (its metadata's ``path``)."""
    paths = []
    for answer in answers:
        ours = answer.dynamic_metadata.fields.get(METADATA_NAMESPACE)
        if ours is not None and PATH_METADATA_KEY in ours.struct_value.fields:
            paths.append(ours.struct_value.fields[PATH_METADATA_KEY].string_value)
    return paths


@pytest.mark.parametrize(
    ("path", "headers", "recorded"),
    [
        # The openai SDK with its settings swapped: the key in the base URL, a model name
        # as the key. Refused (401) before the body's model is read.
        (
            f"/openai/{OPENAI_KEY}/chat/completions",
            {"authorization": "Bearer gpt-4o-mini"},
            "/openai/[redacted]/chat/completions",
        ),
        # Another team's key, the query left out as everywhere.
        (
            f"/openai/{OTHER_TEAMS_KEY}?api-version=1",
            {"x-api-key": "nope-nope"},
            "/openai/[redacted]",
        ),
    ],
    ids=["swapped-settings", "other-team"],
)
async def test_a_refusal_tells_envoy_the_path_as_the_log_line_shows_it(
    path: str, headers: dict[str, str], recorded: str
) -> None:
    # Before: the refusal's metadata named no path, and Envoy logged the one it received.
    sent = await send(path, chat("gpt-4o-mini"), {"authorization": "", **headers})
    assert sent.refusal()[0] == 401
    [line] = sent.lines
    assert line["path"] == recorded
    assert recorded_paths(sent.answers) == [recorded]


async def test_a_key_as_the_model_of_the_path_is_recorded_redacted_by_envoy() -> None:
    sent = await send(f"/openai/{OPENAI_KEY}", chat("gpt-4o-mini"))
    status, error = sent.refusal()
    assert status == 400 and error["code"] == "credential_in_model"
    # The first answer hides the key's shape, the whole path; the refusal, once the
    # model is read, the segment alone. Envoy merges them: the last one is printed.
    assert recorded_paths(sent.answers) == ["/[redacted]", "/openai/[redacted]"]
    assert OPENAI_KEY not in str([answer.dynamic_metadata for answer in sent.answers])


async def test_a_served_request_with_its_own_key_in_the_path_is_recorded_without_it() -> None:
    # The /openai route reads the model from the segment after it and serves whatever
    # follows: the client's own key there went to Envoy's records as sent (the log
    # line hid it when written, Envoy had nothing to read).
    path = f"/openai/claude-3-5-haiku-latest/{OWN_KEY}/chat/completions"
    sent = await send(path, {**chat("ignored"), "max_tokens": 9}, answer=CLAUDE_ANSWER)
    [line] = sent.lines
    assert line["http_status_code"] == 200
    recorded = "/openai/claude-3-5-haiku-latest/[redacted]/chat/completions"
    assert line["path"] == recorded
    assert set(recorded_paths(sent.answers)) == {recorded}
    assert OWN_KEY not in str([answer.dynamic_metadata for answer in sent.answers])


async def test_a_served_request_with_its_own_key_percent_encoded_in_the_path_hides_it() -> None:
    # Envoy leaves a key's '+', '/' or '=' encoded: the gateway's substring test read
    # /openai/<model>/team1%2Dkey/... as holding no key, and every record kept it.
    path = "/openai/claude-3-5-haiku-latest/team1%2Dkey/chat/completions"
    sent = await send(path, {**chat("ignored"), "max_tokens": 9}, answer=CLAUDE_ANSWER)
    [line] = sent.lines
    recorded = "/openai/claude-3-5-haiku-latest/[redacted]/chat/completions"
    assert (line["http_status_code"], line["path"]) == (200, recorded)
    assert set(recorded_paths(sent.answers)) == {recorded}


async def test_a_path_no_route_serves_tells_envoy_the_path_without_the_callers_key() -> None:
    # No line of the gateway's (not AI traffic); Envoy's own 404 logged the key.
    sent = await send(f"/internal/{OWN_KEY}/status", chat("gpt-4o-mini"))
    assert sent.lines == []
    assert recorded_paths(sent.answers) == ["/internal/[redacted]/status"]
    assert OWN_KEY not in str([answer.dynamic_metadata for answer in sent.answers])


async def test_a_path_no_route_serves_without_a_key_tells_envoy_the_path_as_sent() -> None:
    sent = await send("/internal/health?probe=1", chat("gpt-4o-mini"))
    assert recorded_paths(sent.answers) == ["/internal/health"]


async def test_an_ordinary_request_tells_envoy_its_path_once() -> None:
    # The common case: the first answer names the path and method, which Envoy's access
    # log prints as they are (before, Envoy evaluated CEL and ten RE2 searches per
    # request to find them); no later answer repeats them.
    sent = await send(
        "/v1/messages", {**chat("claude-3-5-haiku-latest"), "max_tokens": 9}, answer=CLAUDE_ANSWER
    )
    [line] = sent.lines
    assert line["http_status_code"] == 200 and line["path"] == "/v1/messages"
    assert recorded_paths(sent.answers) == ["/v1/messages"]
    first = sent.answers[0].dynamic_metadata.fields[METADATA_NAMESPACE].struct_value
    assert first.fields["method"].string_value == "POST"


async def test_a_served_request_with_a_key_shape_in_a_segment_is_recorded_redacted() -> None:
    # The gateway serves the /openai route whatever follows the model's segment, and
    # searches none of it for key shapes (its line keeps it): Envoy's records, which
    # found the shape by RE2, now get it hidden from the gateway.
    path = f"/openai/claude-3-5-haiku-latest/{GOOGLE_KEY}/chat/completions"
    sent = await send(path, {**chat("ignored"), "max_tokens": 9}, answer=CLAUDE_ANSWER)
    [line] = sent.lines
    assert line["http_status_code"] == 200
    assert recorded_paths(sent.answers) == ["/[redacted]"]
    assert GOOGLE_KEY not in str([answer.dynamic_metadata for answer in sent.answers])


async def test_a_path_without_a_key_refused_tells_envoy_the_path_as_sent() -> None:
    sent = await send(
        "/openai/gpt-4o-mini/chat/completions",
        chat("gpt-4o-mini"),
        {"authorization": "Bearer nope-nope"},
    )
    assert sent.refusal()[0] == 401
    assert recorded_paths(sent.answers) == ["/openai/gpt-4o-mini/chat/completions"]


def _envoy_records(*, access_log: bool, tracing: bool) -> GatewayConfig:
    """The default config with Envoy's access log and tracer on or off."""
    envoy = GATEWAY.envoy.model_copy(update={"access_log": access_log})
    traced = GATEWAY.telemetry.tracing.model_copy(update={"enabled": tracing})
    telemetry = GATEWAY.telemetry.model_copy(update={"tracing": traced})
    return GATEWAY.model_copy(update={"envoy": envoy, "telemetry": telemetry})


async def test_a_gateway_whose_envoy_neither_logs_nor_traces_names_no_method_or_path() -> None:
    # Before: the first answer named both for an Envoy whose bootstrap reads neither,
    # metadata Envoy stored and dropped on every request. The gateway's own line keeps
    # the path as it records it.
    quiet = _envoy_records(access_log=False, tracing=False)
    path = "/v1/messages"
    sent = await send(path, {**chat("claude-3-5-haiku-latest"), "max_tokens": 9},
                      answer=CLAUDE_ANSWER, gateway=quiet)  # fmt: skip
    [line] = sent.lines
    assert (line["http_status_code"], line["path"]) == (200, path)
    assert recorded_paths(sent.answers) == []
    assert all("method" not in recorded for recorded in _metadata(sent.answers))
    # Nor does a refusal sent as the first answer (an unknown key, refused at the headers).
    refused = await send(
        "/v1/chat/completions", chat("gpt-4o-mini"), {"authorization": "Bearer nope-nope"},
        gateway=quiet,
    )  # fmt: skip
    assert refused.refusal()[0] == 401
    assert refused.answers[0].WhichOneof("response") == "immediate_response"
    assert recorded_paths(refused.answers) == []


@pytest.mark.parametrize(("access_log", "tracing"), [(True, False), (False, True)])
async def test_a_gateway_whose_envoy_logs_or_traces_names_the_method_and_path(
    access_log: bool, tracing: bool
) -> None:
    gateway = _envoy_records(access_log=access_log, tracing=tracing)
    sent = await send("/v1/chat/completions", chat("gpt-4o-mini"), gateway=gateway)
    assert recorded_paths(sent.answers[:1]) == ["/v1/chat/completions"]
    assert _metadata(sent.answers[:1])[0]["method"] == "POST"


def _metadata(answers: list[Any]) -> list[dict[str, Any]]:
    """Each answer's ``io.aigw`` metadata, as a dict."""
    found = []
    for answer in answers:
        ours = answer.dynamic_metadata.fields.get(METADATA_NAMESPACE)
        if ours is not None:
            found.append({k: v.string_value for k, v in ours.struct_value.fields.items()})
    return found


def _envoy_matches(path: str) -> bool:
    """Whether Envoy's expression finds a key shape in ``path`` (Python's re reads
    these RE2 patterns alike: no construct of either's own)."""
    shaped = re.findall(r"\.matches\('([^']*)'\)", ENVOY_PATH)
    assert len(shaped) == len(credential_shapes.RE2_SHAPES)
    return any(re.search(pattern, path) for pattern in shaped)


@pytest.mark.parametrize(
    "secret",
    [
        OPENAI_KEY,
        "sk-ant-api03-" + "Ab1Cd2Ef3Gh4" * 8,
        "AKIAIOSFODNN7EXAMPLE",
        GOOGLE_KEY,
        "ya29.a0AfH6SMBx7Rk2mPzL9vNc4YhGt6",
        "ghp_" + "a1B2c3D4e5" * 4,
        "github_pat_" + "a1B2c3D4e5" * 5,
        "xoxb-123456789012-abcdefghij",
        # A stored key's shape, fixed: a fresh one per collection would differ between
        # the suite's two processes, which must collect the same tests.
        SECRET_PREFIX + "Qm9vdHN0cmFwLWtleS1mb3ItZW52b3ktcGF0aC10ZXN",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJlcmluIn0.c2lnbmF0dXJl",
    ],
)
def test_envoy_finds_every_shape_the_gateway_knows_in_a_path(secret: str) -> None:
    assert credential_shapes.kind(secret) is not None  # the gateway's own check agrees
    for path in (
        f"/openai/{secret}/chat/completions",
        f"/v1beta/models/{secret}:generate",
        f"/v1/files/file_{secret}",
    ):
        assert _envoy_matches(path), path
        # What the gateway names in its first answer: the same finding.
        assert holds_key_shape(path), path


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/openai/gpt-4o-mini/chat/completions",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/model/anthropic.claude-3-haiku-20240307-v1:0/converse",
        "/tasks/desk-abcdefghijklmnopqrstuvwx",  # "sk-" inside a word is no key's start
        # A key shape in the query alone: the gateway refuses it, no record shows it.
        f"/v1/chat/completions?key={GOOGLE_KEY}",
    ],
)
def test_envoy_keeps_a_path_without_a_key_shape(path: str) -> None:
    assert not _envoy_matches(path)
    assert not holds_key_shape(path.partition("?")[0])


@pytest.mark.parametrize(
    "path",
    [
        "/v1/x/eyJhbGciOi.eyJzdWIi",  # a JWT's two first parts
        "/v1/x/abc-eyJhbGciOi.eyJzd",  # after a dash inside a run
        "/v1/x/abceyJhbGciOi.eyJzd",  # inside a word: none
        "/v1/x/eyJhb.eyJzd",  # too short before the dot
        "/v1/x/eyJhbGciOi.eyJz",  # too short after it
        "/v1/x/eyJhbGciOi/eyJzdWIi.a1b2c",  # the dot after another run
        "/v1/x/eyJ-eyJ-eyJ-eyJaaaaaaa.bbbbb",  # the last of many
        "/v1/x/task-sk-" + "a" * 16,
        "/v1/x/task_sk-" + "a" * 16,
        "/v1/x/tasksk-" + "a" * 16,
        "/v1/x/xoxb-123456789",
        "/v1/x/ASIA" + "A1" * 8,
        "/v1/x/ya29.AbCdEfGhIjKlMnOp",
    ],
)
def test_the_gateway_finds_a_key_shape_where_envoy_does(path: str) -> None:
    # The gateway's search replaced Envoy's for every request it answers: same finding,
    # the JWT's in one pass over the path (a run of "eyJ-" is no longer read again from
    # each of them).
    assert holds_key_shape(path) is _envoy_matches(path), path

"""Fuzzing what the gateway parses from outside, away from the request path's entry.

Upstream answers (SSE, Bedrock's binary event stream, buffered JSON) come from
providers the gateway does not control; config files come from operators; the
management API's inputs (keys, quota subjects, rules and counters, call
metadata) come from admin clients. Each property: whatever
arrives, the parser answers in its documented way and never raises anything
else. Request bodies and credential headers are fuzzed through the processor
in ``test_fuzz_requests``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.aws_eventstream import encode_event
from extproc.config.loader import ConfigError, parse_config
from extproc.config.quota_model import QuotasConfig
from extproc.context import Usage
from extproc.envoy_bootstrap import render_bootstrap
from extproc.management.quotas import InvalidArgumentError, QuotaAdmin, normalize_kind
from extproc.management.quotas import NotFoundError as QuotaNotFoundError
from extproc.management.service import _bearer, _new_key
from extproc.management.v1 import management_pb2 as pb
from extproc.quota.rules import RuleSet
from extproc.translators import anthropic_anthropic, openai_anthropic, openai_bedrock, openai_openai
from extproc.translators.base import ResponseTranslator

# Hypothesis's default number of examples a test; FUZZ_EXAMPLES asks for more, for a
# longer search by hand.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FIXTURES = Path("tests/fixtures")


def _openai_sse(jsonl: Path) -> bytes:
    lines = [line for line in jsonl.read_bytes().splitlines() if line.strip()]
    return b"".join(b"data: " + line + b"\n\n" for line in lines) + b"data: [DONE]\n\n"


def _bedrock_events(path: Path) -> bytes:
    out = b""
    for event in orjson.loads(path.read_bytes())["events"]:
        if "exception" in event:
            continue  # exceptions are framed differently; the translator's tests cover them
        out += encode_event(event["event"], orjson.dumps(event["payload"]))
    return out


ANTHROPIC_STREAMS = [
    p.read_bytes() for p in sorted((FIXTURES / "openai_anthropic/streams").glob("*.anthropic.txt"))
]
OPENAI_STREAMS = [
    _openai_sse(p) for p in sorted((FIXTURES / "openai_anthropic/streams").glob("*.openai.jsonl"))
]
BEDROCK_STREAMS = [
    _bedrock_events(p) for p in sorted((FIXTURES / "openai_bedrock/streams").glob("*.events.json"))
]
JSON_ANSWERS = [
    p.read_bytes()
    for folder in ("openai_anthropic/responses", "openai_bedrock/responses")
    for p in sorted((FIXTURES / folder).glob("*.json"))
]

# (name, factory, well-formed samples): every translator an upstream answer can meet.
TRANSLATORS: list[tuple[str, Callable[[], ResponseTranslator], list[bytes]]] = [
    (
        "openai stream, usage hidden",
        lambda: openai_openai.ChunkStreamReader(hide_usage_chunk=True),
        OPENAI_STREAMS,
    ),
    (
        "openai stream, usage shown",
        lambda: openai_openai.ChunkStreamReader(hide_usage_chunk=False),
        OPENAI_STREAMS,
    ),
    ("openai completion", openai_openai.CompletionReader, JSON_ANSWERS),
    ("anthropic stream", anthropic_anthropic.EventStreamReader, ANTHROPIC_STREAMS),
    ("anthropic message", anthropic_anthropic.MessageReader, JSON_ANSWERS),
    (
        "anthropic stream as openai",
        lambda: openai_anthropic.StreamTranslator(include_usage=True, request_id="r", created=1),
        ANTHROPIC_STREAMS,
    ),
    (
        "anthropic message as openai",
        lambda: openai_anthropic.CompletionTranslator(request_id="r", created=1),
        JSON_ANSWERS,
    ),
    (
        "bedrock stream as openai",
        lambda: openai_bedrock.StreamTranslator(
            model="m", include_usage=True, request_id="r", created=1
        ),
        BEDROCK_STREAMS,
    ),
    (
        "bedrock converse as openai",
        lambda: openai_bedrock.CompletionTranslator(model="m", request_id="r", created=1),
        JSON_ANSWERS,
    ),
]
NAMES = [name for name, _, _ in TRANSLATORS]


@st.composite
def mutated(draw: st.DrawFn, samples: list[bytes]) -> bytes:
    """A well-formed answer with a few bytes changed, dropped, inserted or cut off."""
    data = bytearray(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "drop", "insert", "truncate"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "drop":
            del data[at : at + draw(st.integers(1, 16))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


def _feed(translator: ResponseTranslator, data: bytes, cuts: list[int]) -> bytes:
    """Feed ``data`` in pieces as Envoy would; what the client receives, joined."""
    points = sorted({0, *(cut % (len(data) + 1) for cut in cuts), len(data)})
    if len(points) == 1:
        points = [0, 0]
    out = b""
    for start, end in itertools.pairwise(points):
        chunk = data[start:end]
        replaced = translator.feed(chunk, end == len(data))
        assert replaced is None or isinstance(replaced, bytes)
        out += chunk if replaced is None else replaced
    return out


def _check_usage(translator: ResponseTranslator) -> None:
    usage = translator.usage
    assert usage is None or isinstance(usage, Usage)
    if usage is not None:
        assert min(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) >= 0
    assert translator.response_model is None or isinstance(translator.response_model, str)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data(), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_upstream_answer_is_translated_or_ends_cleanly(
    name: str, data: st.DataObject, cuts: list[int]
) -> None:
    _, factory, samples = TRANSLATORS[NAMES.index(name)]
    answer = data.draw(st.binary(max_size=600) | mutated(samples), label="answer")
    translator = factory()
    _feed(translator, answer, cuts)
    _check_usage(translator)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data(), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_how_an_answer_is_cut_into_chunks_changes_nothing(
    name: str, data: st.DataObject, cuts: list[int]
) -> None:
    _, factory, samples = TRANSLATORS[NAMES.index(name)]
    answer = data.draw(st.sampled_from(samples), label="answer")
    whole, pieces = factory(), factory()
    assert _feed(pieces, answer, cuts) == _feed(whole, answer, [])
    assert pieces.usage == whole.usage
    _check_usage(pieces)


# --- config files -----------------------------------------------------------------------

DEFAULT_CONFIG = yaml.safe_load(Path("config/gateway.yaml").read_text())
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(["${UNSET_VAR}", "${X:-1}", "$${literal}", "0.0.0.0:0", "http://h:1"])
)
yaml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


CONFIG_PATHS = _paths(DEFAULT_CONFIG)[1:]


@st.composite
def edited_configs(draw: st.DrawFn) -> str:
    """The default config with a few values replaced, removed or added."""
    config = orjson.loads(orjson.dumps(DEFAULT_CONFIG))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(CONFIG_PATHS))
        parent: Any = config
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.sampled_from(["replace", "remove", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(yaml_values)
            elif action == "remove":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=8))] = draw(yaml_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this path
    return yaml.safe_dump(config)


config_texts = (
    edited_configs()
    | yaml_values.map(yaml.safe_dump)
    | st.text(max_size=200)
    | st.binary(max_size=200).map(lambda raw: raw.decode("latin-1"))
)


@FUZZ
@given(text=config_texts)
def test_any_config_file_loads_or_is_refused_naming_the_problem(text: str) -> None:
    try:
        config = parse_config(text, "fuzz.yaml", {"MOCK_LLM_API_KEY": "k"})
    except ConfigError as refused:
        assert refused.problems and all(isinstance(p, str) and p for p in refused.problems)
        return
    # A config that loads also renders into an Envoy bootstrap.
    assert render_bootstrap(config)["static_resources"]["listeners"]


# --- management API inputs -----------------------------------------------------------

texts = st.text(max_size=40) | st.sampled_from(["", " ", "a" * 300, "key:1", "x/y", "\x00"])


@FUZZ
@given(
    key_id=texts,
    user=texts,
    group=texts,
    labels=st.dictionaries(texts, texts, max_size=3),
    expires=st.floats(allow_nan=False) | st.integers(-(2**40), 2**40).map(float),
    models=st.lists(texts, max_size=3),
    routes=st.lists(texts, max_size=3),
)
def test_any_create_key_request_is_a_key_or_an_invalid_argument(
    key_id: str,
    user: str,
    group: str,
    labels: dict[str, str],
    expires: float,
    models: list[str],
    routes: list[str],
) -> None:
    request = pb.CreateKeyRequest(
        id=key_id,
        user_id=user,
        group_id=group,
        labels=labels,
        expires_at=expires,
        allowed_models=models,
        allowed_routes=routes,
    )
    try:
        key = _new_key(request)
    except InvalidArgumentError as refused:
        assert str(refused)
    else:
        assert key.id == key_id


@FUZZ
@given(
    kind=texts,
    metadata=st.lists(
        st.tuples(
            st.sampled_from(["authorization", "Authorization", "x-other", ""]),
            texts | st.binary(max_size=40),
        ),
        max_size=4,
    ),
)
def test_any_subject_kind_and_call_metadata_parse(
    kind: str, metadata: list[tuple[str, str | bytes]]
) -> None:
    assert isinstance(normalize_kind(kind), str)
    token = _bearer(metadata)
    assert token is None or (token and token == token.strip())


class _Clock:
    def now(self) -> float:
        return 1_800_000_000.0


RULES = RuleSet(
    QuotasConfig.model_validate(
        {
            "rules": [
                {"name": "per-key", "subject": "api_key", "tokens_per_day": 1000},
                {"name": "team", "subject": "group", "match": "eng", "requests_per_minute": 5},
                {
                    "name": "tier",
                    "subject": "header:x-tier",
                    "match": "free",
                    "token_quota": {"limit": 10, "period": "calendar_month"},
                },
            ]
        }
    )
)
ADMIN = QuotaAdmin(None, "aigw:", _Clock())  # type: ignore[arg-type]
kinds = st.sampled_from(["api_key", "group", "header:x-tier", "header: X-Tier ", "user"]) | texts


@FUZZ
@given(
    kind=kinds,
    subject=texts,
    rule=texts | st.sampled_from(["per-key", "team", "tier"]),
    counter=texts | st.sampled_from(["tokens_per_day", "requests_per_minute", "token_quota"]),
)
def test_any_quota_subject_rule_and_counter_select_limits_or_say_why_not(
    kind: str, subject: str, rule: str, counter: str
) -> None:
    try:
        limits = ADMIN.limits(RULES, normalize_kind(kind), subject)
        chosen = QuotaAdmin.select(limits, rule, counter)
        one = QuotaAdmin.select_one(limits, rule, counter)
    except (InvalidArgumentError, QuotaNotFoundError) as refused:
        assert str(refused)
    else:
        assert one in chosen and all(limit in limits for limit in chosen)

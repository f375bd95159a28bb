"""A client that puts a key where the model's name goes: refused, and written nowhere.

The model a request names is recorded in the request log, Envoy's access log and the
span (from the gateway's metadata), the metrics' ``model`` label on a route that sends
any name on (``model_prefixes``), and the 404's message. A client that swapped its
settings sent its key as the model, and every one of those places kept it.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from extproc.auth import credential_shapes
from extproc.auth.stored_keys.records import new_secret
from extproc.config import GatewayConfig, parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.headers import CLUSTER, METADATA_NAMESPACE
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog

GATEWAY = parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", {})
OWN_KEY = "team1-key"
OTHER_TEAMS_KEY = "team2-key"
# OpenAI's shape (the T3BlbkFJ marker), a key the gateway does not know.
OPENAI_KEY = "sk-proj-q8Wd3T3BlbkFJx7Rk2mPzL9vNc4YhGt6Sb1Ue5Af0Qj"
CLAUDE_ANSWER = orjson.dumps(
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-latest",
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
)


class Sent:
    """One request through the processor: what the client, Envoy and the operator saw."""

    def __init__(self, answers: list[Any], log: MemoryLog, metrics: GatewayMetrics) -> None:
        self.answers = answers
        self.lines = log.lines()
        self.metrics = generate_latest(metrics.registry).decode()

    def refusal(self) -> tuple[int, dict[str, Any]]:
        refusal = self.answers[-1].immediate_response
        return refusal.status.code, orjson.loads(refusal.body)["error"]

    def went_upstream(self) -> bool:
        for answer in self.answers:
            phase = getattr(answer, answer.WhichOneof("response"))
            if hasattr(phase, "response"):
                for header in phase.response.header_mutation.set_headers:
                    if header.header.key == CLUSTER:
                        return True
        return False

    def everything(self) -> str:
        """Every place text went: answers (bodies, headers, Envoy's metadata for its
        access log and span), log lines, the metrics page."""
        return "\n".join([*(str(answer) for answer in self.answers), str(self.lines), self.metrics])


async def send(
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    answer: bytes | None = None,
    gateway: GatewayConfig = GATEWAY,
) -> Sent:
    log, metrics = MemoryLog(), GatewayMetrics()
    runtime = Runtime(gateway, Services(metrics, log))
    messages = [
        request_headers(path, headers={"authorization": f"Bearer {OWN_KEY}", **(headers or {})}),
        request_body(orjson.dumps(body)),
    ]
    if answer is not None:
        messages += [response_headers(200), response_body(answer)]
    answers = await run_stream(Processor(lambda: runtime, default_stages()), messages)
    return Sent(answers, log, metrics)


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("path", "body", "headers", "secret", "holds"),
    [
        # The request's own key, in the body, the path and the model header.
        ("/v1/chat/completions", chat(OWN_KEY), {}, OWN_KEY, "this request's API key"),
        ("/openai/team1-key", chat("gpt-4o-mini"), {}, OWN_KEY, "this request's API key"),
        ("/openai", chat("gpt-4o-mini"), {"model": OWN_KEY}, OWN_KEY, "this request's API key"),
        # Inside a name a route sends on as it is (`claude-` goes to Anthropic).
        (
            "/v1/messages",
            {**chat(f"claude-{OWN_KEY}"), "max_tokens": 9},
            {},
            OWN_KEY,
            "this request's API key",
        ),
        # Another team's key, pasted by mistake.
        ("/v1/chat/completions", chat(OTHER_TEAMS_KEY), {}, OTHER_TEAMS_KEY, "an API key of"),
        # A provider key the gateway does not know, by its shape.
        ("/v1/chat/completions", chat(OPENAI_KEY), {}, OPENAI_KEY, "an OpenAI or Anthropic"),
    ],
)
async def test_a_key_named_as_the_model_is_refused_and_recorded_nowhere(
    path: str, body: dict[str, Any], headers: dict[str, str], secret: str, holds: str
) -> None:
    sent = await send(path, body, headers)
    status, error = sent.refusal()
    assert status == 400
    if "code" in error:  # OpenAI's shape; Anthropic's has the type and message alone
        assert error["code"] == "credential_in_model" and error["param"] == "model"
    assert f"'model' holds {holds}" in error["message"]
    assert not sent.went_upstream()
    assert secret not in sent.everything()
    [line] = sent.lines
    assert line["model"] is None and line["error_code"] == "credential_in_model"
    assert line["path"] == path.replace(OWN_KEY, "[redacted]")


async def test_a_key_this_gateway_created_at_run_time_is_refused_as_the_model() -> None:
    # A key of `extproc keys create` (another team's, pasted by mistake) lives in the
    # store, not the config: before, it was no org key and no known shape, so the 404
    # quoted it and the log line kept it as the model.
    created = new_secret()
    sent = await send("/v1/chat/completions", chat(created))
    status, error = sent.refusal()
    assert status == 400 and error["code"] == "credential_in_model"
    assert "'model' holds an API key of this gateway" in error["message"]
    assert created not in sent.everything()
    [line] = sent.lines
    assert line["model"] is None


def test_every_key_this_gateway_creates_has_its_shape() -> None:
    # The shape and the minting are written apart: each secret minted must be recognised.
    for _ in range(2000):
        assert credential_shapes.kind(new_secret()) == "an API key of this gateway"
    # Its prefix before a word is no key: a model or alias may start with it.
    assert credential_shapes.kind("aigw-default-chat-model") is None


async def refused_before_the_model(
    path: str, headers: dict[str, str], method: str = "POST"
) -> tuple[int, list[Any], str]:
    """A request whose headers are refused, through the processor: the status, the log
    lines and everything Envoy and the operator kept of it."""
    log, metrics = MemoryLog(), GatewayMetrics()
    runtime = Runtime(GATEWAY, Services(metrics, log))
    messages = [
        request_headers(path, method=method, headers=headers),
        request_body(orjson.dumps(chat("gpt-4o-mini"))),
    ]
    answers = await run_stream(Processor(lambda: runtime, default_stages()), messages)
    sent = Sent(answers, log, metrics)
    # The refusal's body may quote the path to its client, whose path it is; Envoy's
    # metadata (its access log and span), the log line and the metrics keep nothing.
    metadata = [str(answer.dynamic_metadata) for answer in answers]
    recorded = "\n".join([*metadata, str(sent.lines), sent.metrics])
    return answers[-1].immediate_response.status.code, sent.lines, recorded


@pytest.mark.parametrize(
    ("path", "headers", "method", "secret", "status"),
    [
        # Swapped settings: the key in the model's place of the path, the model as the
        # key. The 401 comes before the body's model is read.
        (f"/openai/{OPENAI_KEY}", {"authorization": "Bearer gpt-4o-mini"}, "POST", OPENAI_KEY, 401),
        (f"/openai/{OPENAI_KEY}/v1/chat/completions", {}, "POST", OPENAI_KEY, 401),
        # Another team's key in the path, beside a key the gateway does not know.
        (f"/openai/{OTHER_TEAMS_KEY}", {"x-api-key": "nope-nope"}, "POST", OTHER_TEAMS_KEY, 401),
        # The request's own key in the path, refused for its method before any key check.
        (f"/openai/{OWN_KEY}", {"authorization": f"Bearer {OWN_KEY}"}, "GET", OWN_KEY, 405),
        # Bedrock's model id in the path (boto3 with modelId set to the key), percent-encoded.
        (f"/model/{OPENAI_KEY.replace('-', '%2D')}/converse", {}, "POST", OPENAI_KEY, 401),
    ],
    ids=["swapped", "after-prefix", "other-team", "own-key-method", "bedrock-encoded"],
)
async def test_a_key_in_the_path_is_not_logged_by_a_request_refused_before_its_model(
    path: str, headers: dict[str, str], method: str, secret: str, status: int
) -> None:
    # Before: only a request whose body was read had its model's segment checked; one
    # refused earlier logged its path, key and all.
    got, lines, recorded = await refused_before_the_model(path, headers, method)
    assert got == status
    assert secret not in recorded
    assert secret.replace("-", "%2D") not in recorded
    [line] = lines
    assert "[redacted]" in line["path"]


@pytest.mark.parametrize("secret", [OPENAI_KEY, OWN_KEY])
async def test_a_key_as_the_model_of_a_vertex_path_is_not_logged(secret: str) -> None:
    # Vertex names the model with its operation (`<model>:rawPredict`): the refusal's
    # redaction matched whole segments only, and logged this one, key and all.
    path = (
        f"/vertex/v1/projects/p/locations/us-east5/publishers/anthropic/models/{secret}:rawPredict"
    )
    body = {
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 9,
        "messages": [{"role": "user", "content": "hi"}],
    }
    sent = await send(path, body)
    status, _ = sent.refusal()
    assert status == 400
    assert secret not in sent.everything()
    [line] = sent.lines
    assert line["error_code"] == "credential_in_model"
    assert line["path"].endswith("/models/[redacted]")


async def test_a_path_without_a_key_is_logged_as_it_came_when_refused() -> None:
    path = "/openai/gpt-4o-mini/v1/chat/completions"
    got, [line], _ = await refused_before_the_model(path, {"authorization": "Bearer nope-nope"})
    assert got == 401 and line["path"] == path


async def test_before_the_key_reached_the_log_the_metrics_and_the_provider() -> None:
    # The control for what the refusal replaced: a name Anthropic's prefix serves is sent
    # on, and recorded as sent: in the log line, the metrics' model label.
    sent = await send(
        "/v1/messages",
        {**chat("claude-team-one-preview"), "max_tokens": 9},
        answer=CLAUDE_ANSWER,
    )
    assert sent.went_upstream()
    [line] = sent.lines
    assert line["model"] == "claude-team-one-preview" and line["http_status_code"] == 200
    assert 'model="claude-team-one-preview"' in sent.metrics
    metadata = [a.dynamic_metadata.fields.get(METADATA_NAMESPACE) for a in sent.answers]
    assert any(m is not None and "claude-team-one-preview" in str(m) for m in metadata)


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o-mini",
        "claude-3-5-haiku-latest",
        # Words a key is made of are no key: the demo keys are "<team>-key".
        "claude-key-points-2025",
        "claude-sk-learn-helper",
    ],
)
async def test_model_names_are_served_as_before(model: str) -> None:
    sent = await send("/v1/chat/completions", chat(model))
    assert sent.went_upstream()


@pytest.mark.parametrize(
    "model",
    [
        # OpenAI fine-tunes: the org's name and a random suffix, mixing digits and cases.
        "ft:gpt-4o-mini-2024-07-18:my-org:custom-suffix:9ABCdefG",
        "ft:gpt-4.1-nano-2025-04-14:acme::BkXyZ123",
        "ft:gpt-4o-2024-08-06:acme-corp:support-bot-v2:AbCdEf12:ckpt-step-2000",
        # Bedrock: profiles, and the ARNs of profiles, provisioned and imported models.
        "global.anthropic.claude-sonnet-4-20250514-v1:0",
        "apac.amazon.nova-pro-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v2:0",
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
        "arn:aws:bedrock:us-west-2:123456789012:provisioned-model/abcd1234efgh",
        "arn:aws:bedrock:us-east-1:123456789012:imported-model/b0ycq0jq8oeq",
        # Hugging Face repos, Vertex endpoints, Fireworks and Cloudflare ids.
        "meta-llama/Llama-3.1-8B-Instruct",
        "hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M",
        "projects/my-project/locations/us-central1/endpoints/1234567890123456789",
        "accounts/my-acct/deployedModels/llama-v3p1-8b-instruct-a1b2c3d4",
        "@cf/meta/llama-3.1-8b-instruct",
        # Azure deployment names, and a deployment id of 32 hex digits (no sk- before it).
        "gpt-4o-2024-08-06-eastus-prod",
        "d8f3a9c2b7e14f6a9d0c5b8e2f1a7c3d",
    ],
)
def test_real_model_ids_are_no_credential(model: str) -> None:
    # The shapes a model check refuses (credential_shapes.kind) are keys' alone: a
    # fine-tune's random suffix, an ARN's account and resource ids, a repo name are none.
    assert credential_shapes.kind(model) is None


def with_models(*names: str) -> GatewayConfig:
    """The default config serving ``names`` too, from the mock provider."""
    entries = "".join(f"  - name: {name}\n    provider: mock\n" for name in names)
    text = DEFAULT_CONFIG.read_text().replace("\nmodels:\n", "\nmodels:\n" + entries, 1)
    return parse_config(text, "gateway.yaml", {})


# A configured name that is an org key or a key's shape is refused when the config loads
# (config.published_names: /v1/models listed it to every client); the key of the request
# that names a model is not the config's to know, and is looked for per request.
@pytest.mark.parametrize(
    ("configured", "secret", "holds"),
    [(f"gpt-{OWN_KEY}", OWN_KEY, "this request's API key")],
)
async def test_a_configured_model_name_holding_a_key_is_still_refused(
    configured: str, secret: str, holds: str
) -> None:
    sent = await send("/v1/chat/completions", chat(configured), gateway=with_models(configured))
    status, error = sent.refusal()
    assert status == 400 and error["code"] == "credential_in_model"
    assert f"'model' holds {holds}" in error["message"]
    assert secret not in sent.everything()


async def test_a_configured_model_name_is_not_hashed_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The org key lookup hashes what it is given: the check of a configured name for one
    # was made when the config loaded, so a request for it hashes its credential only.
    log, metrics = MemoryLog(), GatewayMetrics()
    runtime = Runtime(GATEWAY, Services(metrics, log))
    looked_up: list[str] = []
    lookup = runtime.api_keys.lookup

    def spy(presented: str) -> Any:
        looked_up.append(presented)
        return lookup(presented)

    monkeypatch.setattr(runtime.api_keys, "lookup", spy)
    messages = [
        request_headers("/v1/chat/completions", headers={"authorization": f"Bearer {OWN_KEY}"}),
        request_body(orjson.dumps(chat("gpt-4o-mini"))),
    ]
    await run_stream(Processor(lambda: runtime, default_stages()), messages)
    [line] = log.lines()
    assert line["model"] == "gpt-4o-mini" and line["error_code"] is None
    assert looked_up == [OWN_KEY]

"""Telemetry review, second pass, as an operator reads it through the real Envoy: one
request's gateway log line, Envoy's access log line and span say the same thing, the
metrics add up to the lines, and the documented 80% quota alert fires on a real scrape.

One traced stack (spans exported to an OTLP receiver at once), with a route whose answers
a response guard refuses, Gemini on the mock's Vertex AI, and the marketing group's
monthly token quota with gauges refreshed every second.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    envoy_access_line,
    metric,
    running_stack,
    scrape,
    wait_for,
    write_config,
)
from tests.integration.mock_vertex import vertex_provider
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.integration.test_tracing import traced_config
from tests.unit.test_prometheus_rules import promtool

API_KEY = "team1-key"  # team1: alice, engineering
MARKETING_KEY = "team2-key"  # team2: bob, marketing
QUOTA = 100
SECRET = "top secret"
RULES = Path("deploy/prometheus/rules")


def review_config(workdir: Path, collector: OtlpReceiver) -> dict[str, Any]:
    config = traced_config(workdir, collector.endpoint, content=False)
    config["providers"].append(vertex_provider())
    config["models"].append(
        {
            "name": "gemini-2.5-flash",
            "provider": "vertex",
            "upstream_model": "google/gemini-2.5-flash",
        }
    )
    config["pricing"]["models"]["gemini-2.5-flash"] = {
        "input_per_million": 0.30,
        "output_per_million": 2.50,
    }
    config["guardrails"] = {
        "policies": [
            {
                "name": "no-secrets",
                "response": [{"name": "secret-word", "literals": [SECRET], "message": "Withheld."}],
            }
        ]
    }
    config["routes"] = [
        {"name": "withheld", "path": "/withheld/v1/chat/completions", "guardrails": "no-secrets"},
        {"name": "gemini", "path_prefix": "/v1/models", "api": "gemini_generate_content"},
        *config["routes"],
    ]
    config["quotas"]["rules"].append(
        {
            "name": "marketing-monthly",
            "subject": "group",
            "match": "marketing",
            "token_quota": {"limit": QUOTA, "period": "calendar_month"},
        }
    )
    config["telemetry"]["metrics"] = {
        "quota_gauges": {"refresh_interval_s": 1, "subject_flush_interval_s": 1}
    }
    return config


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpReceiver
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("telemetry-review-2")
    with running_stack(workdir, write_config(workdir, review_config(workdir, collector))) as stack:
        yield stack


def client(stack: LocalStack, key: str = API_KEY, prefix: str = "/v1") -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{prefix}", api_key=key, max_retries=0)


def log_line(stack: LocalStack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    return line


def envoy_line(stack: LocalStack, request_id: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(lambda: envoy_access_line(stack, request_id))
    assert found, f"Envoy logged no line for {request_id}"
    return found


def post(stack: LocalStack, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    """One request as raw HTTP, its whole answer read (a stream's events included)."""
    sent = {"authorization": f"Bearer {API_KEY}", **headers}
    return httpx.post(f"{stack.base_url}{path}", json=body, headers=sent, timeout=30.0)


def chat_body(text: str = "hello there", **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **fields}


# --- the URL the client sent ------------------------------------------------------------------


def test_envoys_log_and_the_span_name_the_url_the_client_sent_not_the_providers(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    # An OpenAI client asks for Claude: the gateway sends /v1/messages to Anthropic.
    # docs/logging.md: Envoy's `path` is "the path the client sent (before any route
    # rewrite)", and the span's http.url is the scheme, authority and path. Both showed
    # the provider's (`/v1/messages` at the provider's host), so a search for the
    # client's calls by path or URL found nothing, and an http:// URL at the provider's
    # host read as if the gateway had called it in plain text.
    raw = client(traced).chat.completions.with_raw_response.create(
        model="claude-3-5-haiku-latest", messages=[{"role": "user", "content": "hi"}]
    )
    request_id = raw.headers["x-request-id"]
    assert log_line(traced, request_id)["path"] == "/v1/chat/completions"
    assert envoy_line(traced, request_id)["path"] == "/v1/chat/completions"
    span = collector.request_span(request_id)
    assert span.attributes["http.url"] == f"{traced.base_url}/v1/chat/completions"


# --- the cost in Envoy's access log -----------------------------------------------------------


def test_envoys_log_has_the_cost_of_a_stream_charged_an_estimate(traced: LocalStack) -> None:
    # A provider that sends no usage report (it ignores include_usage): the line charges
    # an estimate and prices it; Envoy's line had the estimate's tokens and a null cost,
    # so Envoy's costs summed short of the gateway's.
    answer = post(
        traced, "/v1/chat/completions", chat_body(stream=True), **{"x-mock-fault": "no_usage=1"}
    )
    assert answer.status_code == 200 and "[DONE]" in answer.text
    request_id = answer.headers["x-request-id"]
    line = log_line(traced, request_id)
    assert line["usage_estimated"] is True and line["cost_usd"] > 0
    envoy = envoy_line(traced, request_id)
    assert envoy["total_tokens"] == line["total_tokens"]
    assert envoy["cost_usd"] == line["cost_usd"]


# --- a client that gave up before the first token ---------------------------------------------


def test_a_client_that_gave_up_before_the_first_token_is_named_in_envoys_log_and_span(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    # The most common failure of a slow model: the client's timeout. It never got an
    # x-request-id, so the trace id it sent is what the three records share.
    trace_id = secrets.token_hex(16)
    headers = {
        "authorization": f"Bearer {API_KEY}",
        "x-mock-fault": "delay=3",
        "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{traced.base_url}/v1/chat/completions",
            json=chat_body(stream=True),
            headers=headers,
            timeout=httpx.Timeout(30.0, read=0.5),
        )

    def by_trace() -> list[dict[str, Any]]:
        lines = GatewayLog(traced.gateway_log).lines()
        return [line for line in lines if line["trace_id"] == trace_id]

    [line] = wait_for(by_trace)
    assert line["outcome"] == "aborted" and line["api_key_id"] == "team1"
    envoy = envoy_line(traced, line["request_id"])
    assert {key: envoy[key] for key in ("route", "model", "provider", "api_key_id")} == {
        key: line[key] for key in ("route", "model", "provider", "api_key_id")
    }
    span = collector.request_span(line["request_id"])
    assert span.trace_id == trace_id
    # Required by the GenAI conventions; the caller is what the operator looks for.
    assert span.attributes.get("gen_ai.operation.name") == "chat"
    assert span.attributes.get("gen_ai.provider.name") == "openai"
    assert span.attributes.get("gen_ai.request.model") == "gpt-4o-mini"
    assert span.attributes.get("aigw.api_key_id") == "team1"


# --- a stream a response guard refused --------------------------------------------------------


def test_a_stream_a_response_guard_refused_is_a_refusal_in_the_log_and_the_span(
    traced: LocalStack, collector: OtlpReceiver
) -> None:
    answer = post(traced, "/withheld/v1/chat/completions", chat_body(SECRET, stream=True))
    # The 200 had left: the client reads the refusal as the stream's last event.
    assert answer.status_code == 200 and '"code":"guardrail_rejected"' in answer.text
    request_id = answer.headers["x-request-id"]
    line = log_line(traced, request_id)
    assert {"guard": "secret-word", "phase": "response", "action": "reject"} in line["guardrails"]
    assert (line["outcome"], line["error_code"], line["error_message"]) == (
        "rejected",
        "guardrail_rejected",
        "Withheld.",
    )
    assert collector.request_span(request_id).attributes.get("aigw.error_type") == (
        "permission_error"
    )


# --- every record of a request agrees ---------------------------------------------------------


def _anthropic(stack: LocalStack) -> httpx.Response:
    body = {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "hello there"}],
    }
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    return httpx.post(f"{stack.base_url}/v1/messages", json=body, headers=headers, timeout=30.0)


def _gemini(stack: LocalStack) -> httpx.Response:
    body = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}
    return httpx.post(
        f"{stack.base_url}/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        json=body,
        headers={"x-goog-api-key": API_KEY},
        timeout=30.0,
    )


def _converse(stack: LocalStack) -> httpx.Response:
    model = "anthropic.claude-3-haiku-20240307-v1:0"
    body = {"messages": [{"role": "user", "content": [{"text": "hello there"}]}]}
    return post(stack, f"/model/{model}/converse", body)


KINDS: dict[str, Callable[[LocalStack], httpx.Response]] = {
    "chat": lambda stack: post(stack, "/v1/chat/completions", chat_body()),
    "chat stream": lambda stack: post(stack, "/v1/chat/completions", chat_body(stream=True)),
    "translated stream": lambda stack: post(
        stack,
        "/anthropic",
        chat_body(
            model="claude-3-5-haiku-latest", stream=True, stream_options={"include_usage": True}
        ),
    ),
    "messages stream": _anthropic,
    "responses": lambda stack: post(
        stack, "/v1/responses", {"model": "gpt-4o-mini", "input": "hello there"}
    ),
    "embeddings": lambda stack: post(
        stack, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hello"}
    ),
    "converse": _converse,
    "gemini stream": _gemini,
    "provider error": lambda stack: post(
        stack, "/v1/chat/completions", chat_body(), **{"x-mock-fault": "status=500"}
    ),
    "bad key": lambda stack: post(
        stack, "/v1/chat/completions", chat_body(), authorization="Bearer not-a-key"
    ),
}


# What Envoy's access log line names as the gateway's line does.
SHARED_FIELDS = (
    "route",
    "provider",
    "model",
    "api_key_id",
    "user_id",
    "group_id",
    "auth_method",
    "service_tier",
)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_log_line_envoys_line_and_the_span_of_a_request_agree(
    traced: LocalStack, collector: OtlpReceiver, kind: str
) -> None:
    answer = KINDS[kind](traced)
    request_id = answer.headers["x-request-id"]
    line = log_line(traced, request_id)
    envoy = envoy_line(traced, request_id)
    span = collector.request_span(request_id)
    assert line["http_status_code"] == envoy["response_code"] == answer.status_code
    assert line["trace_id"] == envoy["trace_id"] == span.trace_id
    for key in SHARED_FIELDS:
        assert envoy[key] == line[key], key
    charged = line["usage_reported"] or line["usage_estimated"]
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert envoy[key] == (line[key] if charged else None), key
    assert (envoy["cost_usd"] or 0) == line["cost_usd"]
    _span_agrees(span, line, charged)


def _span_agrees(span: ReceivedSpan, line: dict[str, Any], charged: bool) -> None:
    attributes = span.attributes
    assert attributes["http.status_code"] == str(line["http_status_code"])
    named = {
        "aigw.route": "route",
        "aigw.provider": "provider",
        "gen_ai.request.model": "model",
        "gen_ai.response.model": "response_model",
        "aigw.api_key_id": "api_key_id",
        "aigw.service_tier": "service_tier",
        "aigw.quota_decision": "quota_decision",
        "aigw.error_type": "error_type",
    }
    for attribute, key in named.items():
        assert attributes.get(attribute) == line[key], attribute
    counts = {
        "gen_ai.usage.input_tokens": "prompt_tokens",
        "gen_ai.usage.output_tokens": "completion_tokens",
        "aigw.usage.total_tokens": "total_tokens",
    }
    for attribute, key in counts.items():
        assert attributes.get(attribute) == (str(line[key]) if charged else None), attribute
    reasons = attributes.get("gen_ai.response.finish_reasons")
    assert (orjson.loads(reasons) if reasons else None) == line["finish_reasons"]


def test_the_counters_add_up_to_the_log_lines(traced: LocalStack) -> None:
    # Whatever ran before on this stack: tokens by model and token type, cost by model and
    # requests by route and status, as the lines have them (agent lines aside).
    for kind in ("chat", "chat stream", "provider error", "bad key"):
        KINDS[kind](traced)

    def settled() -> tuple[list[dict[str, Any]], dict[Any, float]] | None:
        # A line reaches the file a few ms after its request is counted: read both until
        # they cover the same requests.
        lines = GatewayLog(traced.gateway_log).lines()
        samples = scrape(traced.metrics_url)
        return (lines, samples) if metric(samples, "aigw_requests_total") == len(lines) else None

    found = wait_for(settled)
    assert found, "aigw_requests_total never matched the number of log lines"
    lines, samples = found
    tokens: dict[tuple[str, str], int] = {}
    # By series (the key names its user and group): each holds its exact picodollar sum.
    cost: dict[tuple[str, str, str], Fraction] = {}
    requests: dict[tuple[str, str], int] = {}
    for line in lines:
        model = line["model"] or ""
        if line["usage_reported"] or line["usage_estimated"]:
            for kind in ("prompt", "completion"):
                tokens[(model, kind)] = tokens.get((model, kind), 0) + line[f"{kind}_tokens"]
        series = (line["api_key_id"] or "", model, line["provider"] or "")
        cost[series] = cost.get(series, Fraction(0)) + Fraction(str(line["cost_usd"]))
        status = "aborted" if line["outcome"] == "aborted" else str(line["http_status_code"])
        requests[(line["route"], status)] = requests.get((line["route"], status), 0) + 1
    for (model, kind), count in tokens.items():
        assert metric(samples, "tokens_consumed_total", model=model, token_type=kind) == count
    for (key, model, provider), usd in cost.items():
        found_usd = metric(
            samples, "aigw_cost_usd_total", api_key_id=key, model=model, provider=provider
        )
        assert found_usd == float(usd), (key, model, provider)
    for (route, status), count in requests.items():
        assert metric(samples, "aigw_requests_total", route=route, status_code=status) == count


# --- the documented 80% alert on a real scrape ------------------------------------------------


def test_the_80_percent_quota_alert_fires_on_what_the_gateway_publishes(
    traced: LocalStack, tmp_path: Path
) -> None:
    # Marketing (team2) uses 84 of its 100 tokens (8 + 6 per request with the mock's
    # answer; max_tokens keeps each reservation below what is left): the gauges of a real
    # scrape, fed to the shipped rules, fire AigwQuotaNearlyUsed and not
    # AigwQuotaExhausted, and the query docs/metrics.md gives finds the group.
    marketing = client(traced, MARKETING_KEY)
    for _ in range(6):
        marketing.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello there"}],
            max_tokens=6,
        )
    labels = {"rule": "marketing-monthly", "subject": "marketing", "counter": "token_quota"}
    samples = wait_for(
        lambda: (
            (found := scrape(traced.metrics_url))
            and metric(found, "aigw_quota_used", **labels) >= 0.8 * QUOTA
            and found
        )
    )
    assert samples, "the quota gauges never showed marketing's usage"
    used = metric(samples, "aigw_quota_used", **labels)
    assert 0.8 * QUOTA <= used < QUOTA
    series = [
        {"series": _series(name, pairs), "values": f"{value:g}x15"}
        for (name, pairs), value in samples.items()
        if name.startswith("aigw_quota_")
    ]
    tests = {
        "rule_files": [str(Path.cwd() / RULES / name)
                       for name in ("aigw-recording.yml", "aigw-alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{
                "expr": 'max by (rule, subject_kind, subject, counter) '
                        '(aigw_quota_used{counter="token_quota", mode="enforce"}) / max by '
                        '(rule, subject_kind, subject, counter) '
                        '(aigw_quota_limit{counter="token_quota", mode="enforce"}) >= 0.8 < 1',
                "eval_time": "5m",
                "exp_samples": [{"labels": _series("", {**labels, "subject_kind": "group"}),
                                 "value": used / QUOTA}],
            }],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "AigwQuotaNearlyUsed", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "subject_kind": "group",
                                   "mode": "enforce", **labels},
                    "exp_annotations": {
                        "summary": f"group marketing has used {used / QUOTA:.0%} of its token "
                                   "quota (rule marketing-monthly)",
                        "description": "Requests are refused with 429 insufficient_quota once "
                                       "the quota is used up, until the period resets. Raise "
                                       "it with `extproc quota set` if intended.",
                    },
                }]},
                {"eval_time": "5m", "alertname": "AigwQuotaExhausted", "exp_alerts": []},
            ],
        }],
    }  # fmt: skip
    path = tmp_path / "real-scrape-test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def _series(name: str, labels: Any) -> str:
    pairs = dict(labels)
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(pairs.items()))
    return f"{name}{{{inner}}}"

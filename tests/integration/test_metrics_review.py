"""Review of /metrics with `server.workers: 2` behind the real Envoy: the usage counters
equal the log lines across a worker killed and restarted, the quota gauges an operator
alerts on follow the store (operator's reset, adjust and override included), and label
values taken from clients or JWT claims keep the page valid and bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter as Multiset
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import jwt
import orjson
import pytest
import yaml
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, running_stack, wait_for

JWT_SECRET = "metrics-review-shared-secret-0123456789abcdef"
JWT_ISSUER = "https://idp.metrics-review.example"
MAX_LABEL_VALUES = 60
# USD per million prompt tokens: a prompt of 10 tokens costs 0.1, one of 20 tokens 0.2.
INPUT_PRICE = 10_000
CHEAP = "a b c d"  # 4 words + 6 = 10 prompt tokens at the mock
DEAR = "a b c d e f g h i j k l m n"  # 20 prompt tokens
# Identity labels a JWT may carry: quotes, a backslash, a newline, a long value.
ODD_GROUPS = ('mark"eting', "back\\slash", "new\nline", "x" * 3000, "ünïcödé ✓")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def gateway_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["telemetry"] = {
        "metrics": {
            "max_label_values": MAX_LABEL_VALUES,
            "quota_gauges": {"refresh_interval_s": 0.3, "subject_flush_interval_s": 0.2},
        }
    }
    config["pricing"]["models"]["gpt-4o-mini"] = {
        "input_per_million": INPUT_PRICE,
        "output_per_million": 0,
    }
    config["auth"]["jwt_providers"] = [
        {
            "name": "review",
            "issuer": JWT_ISSUER,
            "audiences": ["aigw"],
            "shared_secret": JWT_SECRET,
            "algorithms": ["HS256"],
        }
    ]
    config["quotas"] = {
        "time_zone": "Europe/Berlin",
        "rules": [
            {
                "name": "group-monthly",
                "subject": "group",
                "token_quota": {"limit": 1_000_000, "period": "calendar_month"},
            }
        ],
    }
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("metrics-review")
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config(), sort_keys=False))
    with running_stack(workdir, config_path=path, workers=2) as running:
        yield running


def token(**claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": JWT_ISSUER, "aud": "aigw", "iat": now, "exp": now + 600, **claims}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


# The request ids of every request the module's tests sent, in order.
SENT: list[str] = []


def chat(stack: LocalStack, credential: str, text: str = CHEAP, model: str = "gpt-4o-mini",
         stream: bool = False) -> httpx.Response:  # fmt: skip
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    response = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"content-type": "application/json", "authorization": f"Bearer {credential}"},
        timeout=30.0,
    )
    SENT.append(response.headers["x-request-id"])
    return response


def page(stack: LocalStack) -> str:
    response = httpx.get(stack.metrics_url, timeout=10.0)
    assert response.status_code == 200, response.text[:500]
    return response.text


def parse(text: str) -> Samples:
    """Every sample, parsed as Prometheus would; a sample may appear only once."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"series {key} appears twice on the page"
            found[key] = sample.value
    return found


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (found, labels), value in samples.items() if found == name}


def worker_streams(stack: LocalStack) -> dict[str, int]:
    """Envoy's count of ext_proc streams per worker endpoint."""
    text = httpx.get(f"{stack.envoy_admin_url}/clusters").text
    found = re.findall(r"^extproc::([\d.]+:\d+)::rq_total::(\d+)$", text, re.MULTILINE)
    return {endpoint: int(count) for endpoint, count in found}


def served_by(stack: LocalStack, credential: str, text: str) -> str:
    """Send one chat; the worker endpoint whose stream count went up."""
    before = worker_streams(stack)
    assert chat(stack, credential, text).status_code == 200
    after = worker_streams(stack)
    [endpoint] = [name for name, count in after.items() if count != before.get(name, 0)]
    return endpoint


def worker_pids(stack: LocalStack) -> dict[int, int]:
    text = (stack.workdir / "gateway.err").read_text()
    return {int(i): int(pid) for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", text)}


def picousd(cost: float) -> int:
    """A log line's cost_usd back in picodollars (the log writes the shortest repr)."""
    return int(Decimal(repr(cost)) * 10**12)


def settled(stack: LocalStack) -> tuple[Samples, list[dict[str, Any]]]:
    """The page and every request's log line, once the log has a line for every request
    sent and the page counts as many requests as the log has lines.

    A worker counts a request, and then writes its line (up to 10 ms later), once Envoy
    has closed the request's stream, which can come just after the client read the
    answer. So the log is read first: once it has a line for every request sent, each of
    them was counted whole before the page is read (a page read first could catch the
    last one halfway through its counts, its request counted and its tokens not, and its
    line written just after). Both are read again until they agree (a count that never
    matches its lines fails)."""

    def agreeing() -> tuple[Samples, list[dict[str, Any]]] | None:
        logged = {line.get("request_id") for line in GatewayLog(stack.gateway_log).lines()}
        if not logged.issuperset(SENT):
            return None
        samples = parse(page(stack))
        requests = sum(series(samples, "aigw_requests_total").values())
        found = GatewayLog(stack.gateway_log).lines()
        if found and len(found) == requests:
            return samples, found
        return None

    agreed: tuple[Samples, list[dict[str, Any]]] | None = wait_for(agreeing, timeout_s=20.0)
    assert agreed, "the page's request count never matched the log's lines"
    return agreed


def log_lines(stack: LocalStack) -> list[dict[str, Any]]:
    """Every request's log line (``settled``)."""
    return settled(stack)[1]


def settled_page(stack: LocalStack) -> Samples:
    """The page once it counts every request sent (``settled``)."""
    return settled(stack)[0]


def log_totals(stack: LocalStack) -> tuple[Multiset[tuple[str, ...]], Multiset[tuple[str, ...]]]:
    """Tokens per (key, user, group, model, provider, token_type) and picodollars per
    (key, user, group, model, provider), summed over the gateway's log lines."""
    tokens: Multiset[tuple[str, ...]] = Multiset()
    cost: Multiset[tuple[str, ...]] = Multiset()
    for line in log_lines(stack):
        identity = tuple(line[name] or "" for name in ("api_key_id", "user_id", "group_id"))
        where = (*identity, line["model"] or "", line["provider"] or "")
        tokens[(*where, "prompt")] += line["prompt_tokens"]
        tokens[(*where, "completion")] += line["completion_tokens"]
        cost[where] += picousd(line["cost_usd"])
    return +tokens, +cost


def assert_counters_match_the_log(stack: LocalStack, samples: Samples) -> None:
    tokens, cost = log_totals(stack)
    on_page = {
        tuple(dict(labels)[name] for name in
              ("api_key_id", "user_id", "group_id", "model", "provider", "token_type")): value
        for labels, value in series(samples, "tokens_consumed_total").items()
    }  # fmt: skip
    assert on_page == {key: float(value) for key, value in tokens.items()}
    cost_on_page = {
        tuple(dict(labels)[name] for name in
              ("api_key_id", "user_id", "group_id", "model", "provider")): value
        for labels, value in series(samples, "aigw_cost_usd_total").items()
    }  # fmt: skip
    # The float nearest each exact sum (int / int rounds correctly), to the last digit.
    assert cost_on_page == {key: total / 10**12 for key, total in cost.items()}


def test_a_cost_series_served_by_both_workers_is_the_exact_sum(stack: LocalStack) -> None:
    """One caller's 0.1 USD request lands on one worker and its 0.2 USD request on the
    other: the page says 0.3, as the log lines add up, not 0.30000000000000004."""
    for attempt in range(20):
        user = f"split-{attempt}"
        credential = token(sub=user, group="finance")
        if served_by(stack, credential, CHEAP) != served_by(stack, credential, DEAR):
            break
    else:
        pytest.fail("Envoy never spread two requests over both workers")
    samples = settled_page(stack)
    [cost] = [
        value
        for labels, value in series(samples, "aigw_cost_usd_total").items()
        if ("user_id", user) in labels
    ]
    assert cost == 0.3
    assert_counters_match_the_log(stack, samples)


COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def counter_samples(samples: Samples) -> Samples:
    """Samples Prometheus reads as counters: a smaller value would read as a reset."""
    return {
        key: value
        for key, value in samples.items()
        if key[0].endswith(COUNTER_SUFFIXES) and not key[0].startswith("aigw_quota")
    }


def assert_no_counter_went_back(before: Samples, after: Samples) -> None:
    lost = set(before) - set(after)
    assert not lost, f"series vanished from the page: {sorted(lost)[:5]}"
    back = {key: (before[key], after[key]) for key in before if after[key] < before[key]}
    assert not back, f"counters went backwards (a reset to Prometheus): {back}"


def send_traffic(stack: LocalStack, rounds: int) -> None:
    """API keys and JWTs whose claims hold quotes, a backslash, a newline, a long value."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)
    for index in range(rounds):
        assert chat(stack, "team2-key", DEAR, stream=index % 2 == 1).status_code == 200
        group = ODD_GROUPS[index % len(ODD_GROUPS)]
        user = f'user "{index % 3}" \\ end'
        assert chat(stack, token(sub=user, group=group), CHEAP).status_code == 200
        answer = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Count to three"}]
        )
        SENT.append(answer.headers["x-request-id"])


def test_counters_equal_the_log_lines_across_a_worker_killed_and_restarted(
    stack: LocalStack,
) -> None:
    send_traffic(stack, rounds=10)
    before = settled_page(stack)
    assert_counters_match_the_log(stack, before)
    before = counter_samples(before)
    victim = worker_pids(stack)[1]
    os.kill(victim, signal.SIGKILL)
    # Scraped all through the restart: the dead worker's counts stay on the page.
    deadline = time.monotonic() + 60.0
    while worker_pids(stack)[1] == victim or not ready(stack):
        assert time.monotonic() < deadline, "worker 1 was not restarted and ready"
        assert_no_counter_went_back(before, counter_samples(parse(page(stack))))
        time.sleep(0.1)
    send_traffic(stack, rounds=6)
    after = settled_page(stack)
    assert_no_counter_went_back(before, counter_samples(after))
    assert_counters_match_the_log(stack, after)
    # No per-process gauge: nothing of the dead worker lingers under its pid.
    assert not [key for key in after if "pid" in dict(key[1])]
    # Both workers served after the restart (Envoy reconnected to the new one).
    log_lines(stack)  # one line per request counted, no more
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    checked = subprocess.run([promtool, "check", "metrics"], input=page(stack),
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    # promtool lints too (e.g. counters without a unit suffix): only errors count.
    assert checked.returncode in (0, 3) and "error" not in checked.stderr.lower(), checked


def ready(stack: LocalStack) -> bool:
    return httpx.get(stack.metrics_url.replace("/metrics", "/readyz")).status_code == 200


def test_label_values_from_jwt_claims_come_back_as_sent(stack: LocalStack) -> None:
    """The page escapes what the exposition format must escape: a parser reads back
    the exact claim values (quotes, backslash, newline, 3000 characters, non-ASCII)."""
    for group in ODD_GROUPS:
        assert chat(stack, token(sub="claims-user", group=group)).status_code == 200
    samples = settled_page(stack)
    groups = {
        dict(labels)["group_id"]
        for labels in series(samples, "tokens_consumed_total")
        if ("user_id", "claims-user") in labels
    }
    assert groups == set(ODD_GROUPS)


def test_made_up_model_names_stay_within_the_label_budget(stack: LocalStack) -> None:
    """Any claude-* name is served (a prefix route): a client inventing names must not
    create a series each. Past the cap the counts go to "other", none is lost."""
    sent = 2 * MAX_LABEL_VALUES
    for _ in range(sent):
        response = chat(stack, "team1-key", model=f"claude-made-up-{uuid.uuid4().hex}")
        assert response.status_code == 200, response.text
    samples = settled_page(stack)
    for name in (
        "aigw_requests_total",
        "tokens_consumed_total",
        "aigw_request_duration_seconds_count",
    ):
        models = {dict(labels)["model"] for labels in series(samples, name)}
        # The budget holds the made-up names; the config's models (and the empty
        # value of requests that reached no provider) are kept outside it.
        made_up = {model for model in models if model.startswith("claude-made-up-")}
        assert len(made_up) <= MAX_LABEL_VALUES, name
        assert "other" in models, name
    assert_counters_match_the_log_folded(stack, samples)


def assert_counters_match_the_log_folded(stack: LocalStack, samples: Samples) -> None:
    """Token totals per api key, whatever models were folded into "other"."""
    tokens, _ = log_totals(stack)
    by_key: Multiset[str] = Multiset()
    for key, value in tokens.items():
        by_key[key[0]] += value
    on_page: Multiset[str] = Multiset()
    for labels, count in series(samples, "tokens_consumed_total").items():
        on_page[dict(labels)["api_key_id"]] += int(count)
    assert +on_page == +by_key


def operator(stack: LocalStack, command: str, *args: str) -> None:
    """`extproc quota <command>` on the marketing group's monthly token quota."""
    subprocess.run(
        [sys.executable, "-m", "extproc", "quota", command, "--config", str(stack.config_path),
         "--kind", "group", "--subject", "marketing", "--rule", "group-monthly",
         "--counter", "token_quota", *args],
        env={**stack.env, "AIGW_ADMIN_TOKEN": "dev-admin-token"}, check=True,
        capture_output=True, timeout=60,
    )  # fmt: skip


def marketing_gauges(stack: LocalStack) -> dict[str, float]:
    samples = parse(page(stack))
    wanted = (("counter", "token_quota"), ("mode", "enforce"), ("rule", "group-monthly"),
              ("subject", "marketing"), ("subject_kind", "group"))  # fmt: skip
    return {
        name.removeprefix("aigw_quota_"): value
        for (name, labels), value in samples.items()
        if name.startswith("aigw_quota_") and labels == wanted
    }


def gauges_reach(stack: LocalStack, **expected: float) -> dict[str, float]:
    found = wait_for(
        lambda: (
            (g := marketing_gauges(stack)) and all(g.get(k) == v for k, v in expected.items()) and g
        ),
        timeout_s=20.0,
    )
    assert found, f"the gauges never showed {expected}: {marketing_gauges(stack)}"
    return dict(found)


def marketing_tokens(stack: LocalStack) -> int:
    return sum(
        line["prompt_tokens"] + line["completion_tokens"]
        for line in log_lines(stack)
        if line["group_id"] == "marketing"
    )


def test_the_quota_gauges_follow_the_store_through_an_operators_reset_adjust_and_override(
    stack: LocalStack,
) -> None:
    """What an operator alerts on: the group's used and limit, from the store, whichever
    worker served the requests and whatever the operator changed since."""
    for _ in range(4):
        assert chat(stack, "team2-key", DEAR).status_code == 200
    used = marketing_tokens(stack)
    found = gauges_reach(stack, used=used, limit=1_000_000)
    assert found["remaining"] == 1_000_000 - used
    assert found["reset_timestamp_seconds"] > time.time()

    operator(stack, "reset")
    gauges_reach(stack, used=0, remaining=1_000_000)
    operator(stack, "adjust", "--delta", "800000")
    gauges_reach(stack, used=800_000, remaining=200_000)
    assert chat(stack, "team2-key", DEAR).status_code == 200
    spent = marketing_tokens(stack) - used
    gauges_reach(stack, used=800_000 + spent)
    operator(stack, "set", "--limit", "900000")
    gauges_reach(stack, limit=900_000, remaining=100_000 - spent)
    operator(stack, "set", "--limit", "0")  # back to the config's limit
    gauges_reach(stack, limit=1_000_000, remaining=200_000 - spent)


def test_a_jwt_claim_with_a_lone_surrogate_is_refused_and_logged(stack: LocalStack) -> None:
    # JSON lets a token carry it; no store key, log line or label can: a 401, not a 500.
    response = chat(stack, token(sub="surrogate-user", group="bad\udcffgroup"))
    assert response.status_code == 401, response.text
    assert "not valid Unicode" in response.json()["error"]["message"]
    request_id = response.headers["x-request-id"]
    assert GatewayLog(stack.gateway_log).for_request(request_id)
    parse(page(stack))

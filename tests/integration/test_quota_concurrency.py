"""Three gateway processes share one Valkey behind one Envoy; 200 requests at once.

Request limits must admit exactly their count; a hard-capped token budget must
hold up to the prompt estimate's error; and the usage recorded must equal what
the provider reported, request by request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import config_with_keys, running_stack, usage_rows
from tests.integration.test_store_outage import OwnValkey

KEYS = {"conc-r": "concurrent-requests-key", "conc-t": "concurrent-tokens-key"}
REQUEST_LIMIT = 50
TOKEN_BUDGET = 1500
# The mock counts 2 more prompt tokens than the gateway's estimate for this prompt.
PROMPT_ESTIMATE_ERROR = 2
STORE_WAIT_MS = 4000
RULES = f"""
quotas:
  rules:
    - {{name: fifty, subject: api_key, match: conc-r, requests_per_day: {REQUEST_LIMIT}}}
    - {{name: budget, subject: api_key, match: conc-t, tokens_per_day: {TOKEN_BUDGET},
       hard_cap: true}}
"""


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    valkey = OwnValkey(tmp_path_factory.mktemp("shared-valkey"))
    valkey.start()
    workdir = tmp_path_factory.mktemp("replicas")
    config = config_with_keys(workdir, KEYS, RULES)
    # The burst loads the machine (three gateways, 50 clients): a store answer past the
    # default 500 ms wait failed a request closed (503), which is the outage tests' to
    # check; here every request must reach the store, however slowly.
    text = config.read_text()
    config.write_text(text.replace("store:\n", f"store:\n  timeout_ms: {STORE_WAIT_MS}\n", 1))
    try:
        with running_stack(
            workdir,
            config,
            extra_env={"REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0"},
            gateways=3,
        ) as running:
            yield running
    finally:
        valkey.stop()


def burst(stack: LocalStack, key: str, count: int = 200) -> list[httpx.Response]:
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi all"}]}
    )
    headers = {"authorization": f"Bearer {KEYS[key]}", "content-type": "application/json"}
    url = f"{stack.base_url}/v1/chat/completions"

    def post(_: int) -> httpx.Response:
        # A connection of its own per request: one client's pool shared by 50 threads
        # once failed a read with EBADF (a socket closed under another thread).
        return httpx.post(url, content=body, headers=headers, timeout=60.0)

    with ThreadPoolExecutor(max_workers=50) as pool:
        return list(pool.map(post, range(count)))


def test_a_request_limit_admits_exactly_its_count_across_replicas(replicas: LocalStack) -> None:
    answers = burst(replicas, "conc-r")
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) == REQUEST_LIMIT
    assert statuses.count(429) == len(answers) - REQUEST_LIMIT


def test_a_hard_capped_budget_holds_and_usage_matches_the_provider(replicas: LocalStack) -> None:
    answers = burst(replicas, "conc-t")
    admitted = [answer for answer in answers if answer.status_code == 200]
    assert {answer.status_code for answer in answers} <= {200, 429}
    used = sum(answer.json()["usage"]["total_tokens"] for answer in admitted)
    assert used <= TOKEN_BUDGET + PROMPT_ESTIMATE_ERROR * len(admitted)
    assert admitted  # a burst is served until the reservations use the budget up

    def recorded() -> dict[str, int] | None:
        row = usage_rows(replicas, "api_key").get("conc-t")
        if row is None or row["requests"] < len(admitted):
            return None
        return row

    deadline = time.monotonic() + 15
    row = recorded()
    while row is None and time.monotonic() < deadline:
        time.sleep(0.5)
        row = recorded()
    assert row is not None
    assert row["requests"] == len(admitted)
    assert row["prompt_tokens"] + row["completion_tokens"] == used

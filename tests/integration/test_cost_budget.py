"""A group's budget in dollars, through the real Envoy, counted in the real Valkey.

Finance's two keys share a lifetime budget of $0.0002; each gpt-4o answer costs
what its log line's ``cost_usd`` says (the default price table), and the budget
counts exactly that, rounded up to the millionth of a dollar. Requests are
admitted while something is left; once the answers' cost fills the budget, both
keys get a 429 ``insufficient_quota`` that names the budget in dollars, while
marketing's key is not touched. ``extproc quota get`` shows the same spend.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, cast

import httpx
import openai
import orjson
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, run_cli, running_stack, wait_for

ADMIN_TOKEN = "cost-budget-admin-token"
KEYS = {"fin-a": "fin-a-secret-key", "fin-b": "fin-b-secret-key"}
LIMIT_MICRO_USD = 200
BUDGET = """
quotas:
  rules:
    - name: finance-budget
      subject: group
      match: finance
      cost_quota: {limit_usd: 0.0002, period: lifetime}
"""
MODEL = "gpt-4o"
GAUGES = "telemetry:\n  metrics:\n    quota_gauges: {refresh_interval_s: 1}\n"


@pytest.fixture(scope="module")
def budget_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("cost-budget")
    text = DEFAULT_CONFIG.read_text().replace("${AIGW_ADMIN_TOKEN:-dev-admin-token}", ADMIN_TOKEN)
    keys = "".join(
        f"    - {{id: {name}, key: {secret}, group_id: finance}}\n" for name, secret in KEYS.items()
    )
    config = workdir / "gateway.yaml"
    text = text.replace("  api_keys:\n", "  api_keys:\n" + keys, 1)
    # Gauges read from the store every second, not 15 s: the test reads them.
    text = text.replace("telemetry:\n", GAUGES, 1)
    config.write_text(text + BUDGET)
    with running_stack(workdir, config) as running:
        yield running


def client(stack: LocalStack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)


def ask(stack: LocalStack, key: str) -> str:
    """One gpt-4o question; its request id."""
    answer = client(stack, key).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "what does this cost?"}]
    )
    return answer.headers["x-request-id"]


def micro_usd(line: dict[str, object]) -> int:
    """A log line's cost as the budget counts it: millionths of a dollar, rounded up."""
    return math.ceil(Decimal(str(line["cost_usd"])) * 10**6)


def test_a_group_budget_in_dollars_admits_until_its_answers_cost_fill_it(
    budget_stack: LocalStack,
) -> None:
    log = GatewayLog(budget_stack.gateway_log)
    admitted: list[str] = []
    with pytest.raises(openai.RateLimitError) as refused:
        for turn in range(20):
            admitted.append(
                ask(budget_stack, "fin-a-secret-key" if turn % 2 else "fin-b-secret-key")
            )
    lines = [log.for_request(request_id)[0] for request_id in admitted]
    costs = [micro_usd(line) for line in lines]

    # Each answer was admitted with budget left, and the last one filled it.
    assert all(cost > 0 for cost in costs)
    spent_before = [sum(costs[:index]) for index in range(len(costs))]
    assert all(spent < LIMIT_MICRO_USD for spent in spent_before)
    assert sum(costs) >= LIMIT_MICRO_USD
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "insufficient_quota"
    assert error["message"].startswith(
        "Rate limit reached for group 'finance' (rule 'finance-budget'): $0.0002 per lifetime,"
        f" ${Decimal(sum(costs)) / 10**6} used"
    )
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert "x-ratelimit-limit-tokens" not in refused.value.response.headers
    # The other key of the group shares the budget; another group is not touched.
    with pytest.raises(openai.RateLimitError):
        ask(budget_stack, "fin-a-secret-key")
    assert ask(budget_stack, "team2-key")

    # What the operator reads: the same spend, in millionths of a dollar and in dollars.
    state = run_cli(budget_stack, "quota", "get", "--kind", "group", "--subject", "finance",
                    "--format", "json", admin_token=ADMIN_TOKEN)  # fmt: skip
    assert state.returncode == 0, state.stderr
    [limit] = orjson.loads(state.stdout)["limits"]
    assert (limit["counter"], limit["kind"], limit["limit"]) == ("cost_quota", "usd_micros", 200)
    assert (limit["used"], limit["reserved"], limit["remaining"]) == (sum(costs), 0, 0)
    table = run_cli(budget_stack, "quota", "get", "--kind", "group", "--subject", "finance",
                    admin_token=ADMIN_TOKEN)  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "$0.0002 USD" in table.stdout

    # What the group's callers read of their own limits, through Envoy.
    own = httpx.get(
        f"{budget_stack.base_url}/aigw/v1/limits",
        headers={"authorization": "Bearer fin-b-secret-key"},
        timeout=10.0,
    )
    assert own.status_code == 200, own.text
    [entry] = own.json()["data"]
    assert (entry["rule"], entry["subject"], entry["unit"]) == ("finance-budget", "finance", "usd")
    assert (Decimal(str(entry["used"])), entry["remaining"]) == (Decimal(sum(costs)) / 10**6, 0)
    assert entry["resets_at"] is None  # a lifetime budget

    # The gauges say dollars.
    def gauge_used() -> Decimal | None:
        page = httpx.get(budget_stack.metrics_url, timeout=10.0).text
        return next(
            (
                Decimal(line.rsplit(" ", 1)[1])
                for line in page.splitlines()
                if line.startswith("aigw_quota_used{") and 'counter="cost_quota"' in line
            ),
            None,
        )

    spent_usd = Decimal(sum(costs)) / 10**6
    wait_for(lambda: gauge_used() == spent_usd)  # refreshed every second
    assert gauge_used() == spent_usd


def finance_budget(stack: LocalStack, *change: str) -> dict[str, Any]:
    """`extproc quota <get or change>` of finance's budget, as JSON: its one limit."""
    command = change or ("get",)
    done = run_cli(stack, "quota", *command, "--kind", "group", "--subject", "finance",
                   *(("--rule", "finance-budget", "--counter", "cost_quota") if change else ()),
                   "--format", "json", admin_token=ADMIN_TOKEN)  # fmt: skip
    assert done.returncode == 0, done.stderr
    [limit] = orjson.loads(done.stdout)["limits"]
    return cast(dict[str, Any], limit)


def test_an_operator_raises_the_budget_and_grants_dollars_back(budget_stack: LocalStack) -> None:
    with pytest.raises(openai.RateLimitError):
        for _ in range(20):  # spent, if the test above has not spent it already
            ask(budget_stack, "fin-a-secret-key")

    raised = finance_budget(budget_stack, "set", "--limit-usd", "$0.50")
    assert (raised["limit"], raised["configured_limit"], raised["overridden"]) == (
        500_000,
        LIMIT_MICRO_USD,
        True,
    )
    assert ask(budget_stack, "fin-a-secret-key")

    # Once the answer is settled (nothing held), a grant of $0.00001 takes 10 millionths off.
    settled = wait_for(lambda: (limit := finance_budget(budget_stack))["reserved"] == 0 and limit)
    granted = finance_budget(budget_stack, "adjust", "--delta-usd", "-0.00001")
    assert granted["used"] == settled["used"] - 10

    # Dollars on a counter of tokens would be read as tokens: refused before any call.
    rule = ("quota", "set", "--kind", "group", "--subject", "finance", "--rule", "finance-budget")
    wrong = run_cli(budget_stack, *rule, "--counter", "token_quota", "--limit-usd", "5",
                    admin_token=ADMIN_TOKEN)  # fmt: skip
    assert wrong.returncode == 2
    assert "--limit-usd is for --counter cost_quota" in wrong.stderr
    too_fine = run_cli(budget_stack, *rule, "--counter", "cost_quota", "--limit-usd", "0.0000001",
                       admin_token=ADMIN_TOKEN)  # fmt: skip
    assert too_fine.returncode == 2 and "at most six decimals" in too_fine.stderr
    not_dollars = run_cli(budget_stack, *rule, "--counter", "cost_quota", "--limit-usd", "sNaN",
                          admin_token=ADMIN_TOKEN)  # fmt: skip
    assert not_dollars.returncode == 2 and "expected dollars" in not_dollars.stderr
    assert "Traceback" not in not_dollars.stderr

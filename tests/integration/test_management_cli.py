"""`extproc quota ...` against a running gateway, and real requests through Envoy that follow.

An operator lowers team1's limit and the next request is a 429; a reset or a
grant lets the next one through. The management API has its own port: Envoy's
public listener answers its paths with a 404, and a wrong token gets exit code 2.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import REFUSED_PORT, running_stack, wait_for
from tests.integration.forked import run_extproc_text

ADMIN_TOKEN = "cli-test-admin-token"
# A finance job's token: usage reports, nothing else.
FINANCE_TOKEN = "cli-test-finance-token"
FINANCE = f"""
    - id: finance
      token: {FINANCE_TOKEN}
      scopes: [usage:read]
"""
RULE = """
quotas:
  rules:
    - name: team1-hourly
      subject: api_key
      match: team1
      requests_per_hour: 2
"""


@pytest.fixture(scope="module")
def managed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("management")
    token = "token: ${AIGW_ADMIN_TOKEN:-dev-admin-token}\n"
    text = DEFAULT_CONFIG.read_text().replace(token, f"token: {ADMIN_TOKEN}" + FINANCE)
    config = workdir / "gateway.yaml"
    config.write_text(text + RULE)
    with running_stack(workdir, config) as running:
        yield running


def quota(
    stack: LocalStack, *args: str, token: str | None = ADMIN_TOKEN
) -> subprocess.CompletedProcess[str]:
    """Run `extproc quota ...` as an operator would, with the stack's config."""
    argv = [sys.executable, "-m", "extproc", "quota", *args, "--config", str(stack.config_path)]
    if token is not None:
        argv += ["--token", token]
    env = {name: value for name, value in stack.env.items() if name != "AIGW_ADMIN_TOKEN"}
    return run_extproc_text(argv, env)


def team1_limit(stack: LocalStack, *args: str) -> dict[str, Any]:
    """Run a quota command on team1's rule and return the limit's state it prints."""
    done = quota(stack, *args, "--kind", "api_key", "--subject", "team1", "--format", "json")
    assert done.returncode == 0, done.stderr
    state = orjson.loads(done.stdout)
    assert (state["subject_kind"], state["subject"]) == ("api_key", "team1")
    limit: dict[str, Any] = state["limits"][0]
    return limit


def chat(stack: LocalStack) -> int:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count me"}]}
    answer = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"authorization": "Bearer team1-key", "content-type": "application/json"},
        timeout=30.0,
    )
    return answer.status_code


def within_one_hour_window() -> None:
    """Start the scenario early enough that the hourly window cannot roll over in it."""
    into_hour = time.time() % 3600
    if into_hour > 3555:
        time.sleep(3601 - into_hour)


def test_requests_follow_what_the_operator_sets(managed_stack: LocalStack) -> None:
    within_one_hour_window()
    rule = ("--rule", "team1-hourly", "--counter", "requests_per_hour")
    fresh = team1_limit(managed_stack, "get")
    assert (fresh["limit"], fresh["used"], fresh["kind"]) == (2, 0, "requests")

    assert chat(managed_stack) == 200
    lowered = team1_limit(managed_stack, "set", *rule, "--limit", "1")
    assert (lowered["limit"], lowered["configured_limit"], lowered["used"]) == (1, 2, 1)
    assert chat(managed_stack) == 429

    assert team1_limit(managed_stack, "reset")["used"] == 0
    assert chat(managed_stack) == 200
    assert chat(managed_stack) == 429

    granted = team1_limit(managed_stack, "adjust", *rule, "--delta", "-1")
    assert (granted["used"], granted["remaining"]) == (0, 1)
    assert chat(managed_stack) == 200

    restored = team1_limit(managed_stack, "set", *rule, "--limit", "0")
    assert (restored["limit"], restored["overridden"], restored["used"]) == (2, False, 1)

    listed = quota(managed_stack, "list", "--kind", "api_key")
    assert listed.returncode == 0, listed.stderr
    assert "api_key:team1" in listed.stdout and "team1-hourly" in listed.stdout

    # Each change left an audit line on the gateway's stderr, naming the token's id.
    err = managed_stack.workdir / "gateway.err"
    audits = wait_for(lambda: [line for line in err.read_text().splitlines() if '"audit"' in line])
    actions = [orjson.loads(line)["action"] for line in audits]
    assert actions[-4:] == ["set_limit", "reset_usage", "adjust_usage", "set_limit"]
    assert all(orjson.loads(line)["caller"] == "ops" for line in audits)
    assert ADMIN_TOKEN not in err.read_text()


@pytest.mark.parametrize(
    ("token", "message"),
    [("not-the-token", "invalid admin token"), (None, "no admin token")],
    ids=["wrong", "missing"],
)
def test_a_wrong_or_missing_token_exits_2_with_a_clear_message(
    managed_stack: LocalStack, token: str | None, message: str
) -> None:
    done = quota(managed_stack, "get", "--kind", "api_key", "--subject", "team1", token=token)

    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert "not-the-token" not in done.stderr
    assert done.stdout == ""


def test_a_token_scoped_to_usage_reports_reads_them_and_changes_nothing(
    managed_stack: LocalStack,
) -> None:
    argv = [sys.executable, "-m", "extproc", "usage", "report", "--api", "--by", "api_key",
            "--format", "json", "--config", str(managed_stack.config_path)]  # fmt: skip
    env = {**managed_stack.env, "AIGW_ADMIN_TOKEN": FINANCE_TOKEN}
    report = run_extproc_text(argv, env)
    assert report.returncode == 0, report.stderr
    assert "rows" in orjson.loads(report.stdout)

    subject = ("--kind", "api_key", "--subject", "team1")
    for args in (("get", *subject), ("reset", *subject)):
        refused = quota(managed_stack, *args, token=FINANCE_TOKEN)
        assert refused.returncode == 2, refused.stderr
        assert "refused the call: the admin token 'finance' does not have the scope" in (
            refused.stderr
        )
        assert "Traceback" not in refused.stderr and FINANCE_TOKEN not in refused.stderr

    # The refused change is in the audit trail under the token's id.
    err = managed_stack.workdir / "gateway.err"

    def refusals() -> list[dict[str, Any]]:
        lines = [orjson.loads(line) for line in err.read_text().splitlines() if '"audit"' in line]
        return [line for line in lines if line["caller"] == "finance"]

    [line] = wait_for(refusals)
    assert (line["action"], line["caller"], line["subject"]) == ("reset_usage", "finance", "team1")
    assert line["error"] == "missing scope quotas:write"
    assert FINANCE_TOKEN not in err.read_text()


def test_an_unknown_rule_and_an_unreachable_address_exit_2(managed_stack: LocalStack) -> None:
    subject = ("--kind", "api_key", "--subject", "team1")
    unknown = quota(managed_stack, "reset", *subject, "--rule", "no-such-rule")
    assert unknown.returncode == 2
    assert "rule 'no-such-rule' does not apply to api_key 'team1'" in unknown.stderr

    nobody = quota(managed_stack, "get", *subject, "--address", f"127.0.0.1:{REFUSED_PORT}")
    assert nobody.returncode == 2
    assert "cannot reach the management API" in nobody.stderr
    assert "Traceback" not in nobody.stderr


def test_envoys_public_listener_does_not_reach_the_management_api(
    managed_stack: LocalStack,
) -> None:
    path = "/aigw.management.v1.QuotaManagement/ResetUsage"
    plain = httpx.post(f"{managed_stack.base_url}{path}", content=b"{}", timeout=10.0)
    assert plain.status_code == 404
    assert plain.json()["error"]["code"] == "route_not_found"

    # A real gRPC call to Envoy's listener gets Envoy's own "no route" (which it
    # sends as gRPC status UNIMPLEMENTED to gRPC clients), not the management API.
    envoy = f"127.0.0.1:{managed_stack.ports.envoy}"
    through_envoy = quota(
        managed_stack, "reset", "--kind", "api_key", "--subject", "team1", "--address", envoy
    )
    assert through_envoy.returncode != 0
    assert "no route for this path" in through_envoy.stderr
    assert "UNIMPLEMENTED" in through_envoy.stderr

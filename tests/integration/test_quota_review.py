"""Quotas and chargeback through the real Envoy, gateway and Valkey, found wrong in review.

A client counts tokens with the `anthropic` client after its key's token budget is
spent; a billing team exports usage for a user whose id holds a carriage return; an
operator's shadow rule watches a key while the store goes down. Each is what the docs
promise and what the gateway did not do.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anthropic
import httpx
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import config_with_admin_token, run_cli, running_stack, wait_for
from tests.integration.test_store_outage import OwnValkey

ADMIN_TOKEN = "quota-review-h4-admin-token"
KEYS = {"tiny": "tiny-review-secret", "watched": "watched-review-secret"}
CR_SECRET = "cr-review-secret"
QUOTAS = """
quotas:
  rules:
    - {name: tiny-tokens, subject: api_key, match: tiny, tokens_per_hour: 10}
    # Watch before enforcing (docs/quotas.md): the only rule on this key.
    - {name: watch-daily, subject: api_key, match: watched, tokens_per_day: 200000,
       mode: shadow}
"""
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "count me"}]


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnValkey]:
    """A Valkey this module stops and starts again (same port, same data)."""
    server = OwnValkey(tmp_path_factory.mktemp("quota-review-valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def review_stack(
    tmp_path_factory: pytest.TempPathFactory, valkey: OwnValkey
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("quota-review")
    config = config_with_admin_token(workdir, ADMIN_TOKEN, QUOTAS)
    keys = "".join(f"    - {{id: {name}, key: {secret}}}\n" for name, secret in KEYS.items())
    # A user id of the identity provider's or the config's: the management API refuses
    # one with a control character, the config and a JWT's claims can still name it.
    keys += f'    - {{id: cr-bot, key: {CR_SECRET}, user_id: "ops\\rwest"}}\n'
    text = config.read_text()
    config.write_text(text.replace("  api_keys:\n", "  api_keys:\n" + keys, 1))
    with running_stack(
        workdir, config, extra_env={"REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0"}
    ) as running:
        yield running


def chat(stack: LocalStack, key: str) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"authorization": f"Bearer {KEYS[key]}", "content-type": "application/json"},
        timeout=30.0,
    )


def test_a_token_count_answers_after_the_token_budget_is_spent(review_stack: LocalStack) -> None:
    # docs/providers.md: a count "reserves no quota tokens, so a spent token budget does
    # not refuse it". 10 tokens an hour: one chat request spends them all.
    assert chat(review_stack, "tiny").status_code == 200
    assert chat(review_stack, "tiny").status_code == 429
    client = anthropic.Anthropic(
        base_url=review_stack.base_url, api_key=KEYS["tiny"], max_retries=0
    )
    counted = client.messages.count_tokens(
        model="claude-3-5-haiku-latest",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert counted.input_tokens > 0


def test_a_user_id_with_a_carriage_return_is_exported_under_its_exact_name(
    review_stack: LocalStack, tmp_path: Path
) -> None:
    user = "ops\rwest"
    client = OpenAI(base_url=f"{review_stack.base_url}/v1", api_key=CR_SECRET, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    today = datetime.now(UTC).date().isoformat()

    export = tmp_path / "by-user.csv"

    def user_rows() -> list[dict[str, str]] | None:
        done = run_cli(review_stack, "usage", "export", "--day", today, "--by", "user",
                       "--output", str(export), admin_token=ADMIN_TOKEN)  # fmt: skip
        assert done.returncode == 0, done.stderr
        # As a billing job reads the file: csv with newline="" (RFC 4180).
        with export.open(newline="") as file:
            rows = list(csv.DictReader(file))
        return rows if "ops" in export.read_text() else None

    # The rollups land with the next flush (0.5 s).
    rows = wait_for(user_rows)
    assert rows is not None
    assert {row["user_id"]: row["requests"] for row in rows}.get(user) == "1"


def test_a_shadow_rule_does_not_fail_its_keys_traffic_when_the_store_is_down(
    review_stack: LocalStack, valkey: OwnValkey
) -> None:
    assert chat(review_stack, "watched").status_code == 200
    valkey.stop()
    try:
        # docs/quotas.md: a shadow rule is "counted and reported, never blocks"; with the
        # default on_store_failure (fail_closed) this was a 503 quota_store_unavailable.
        answer = chat(review_stack, "watched")
        assert answer.status_code == 200, answer.text
    finally:
        valkey.start()

"""A hard-capped token budget beside another limit that refuses the request.

The reserve script answered a refusal with the limits that refused, and the 429 named the
one that lasts longest. A hard-capped budget that did not refuse (it had tokens left) was
not among them, though the prompt was too large for it: the client was told the other
limit's ``retry-after`` (a minute's requests), waited, retried, and was refused for its
prompt's size, for good or until the budget's period ends. Now the script's refusal
carries, in the same round trip, every enforced hard-capped budget that had room, and the
429 is the one that lasts longest for this prompt: "prompt too large" (no ``retry-after``)
before any, a budget too low for it this period before a shorter wait. The same holds
for a held budget among several refusals: one that would leave this prompt too little
room once its running requests settle lasts until its period ends, not the held wait.

Against a real Valkey, through the processor (Anthropic's Messages API, key team1).
"""

from __future__ import annotations

from pathlib import Path

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import response_body, response_headers
from tests.unit.conftest import MemoryLog
from tests.unit.test_quota_held import CLAUDE, Call

GATEWAY = Path("config/gateway.yaml").read_text(encoding="utf-8")
GATEWAY = GATEWAY.replace("\nstore:\n", "\nstore:\n  timeout_ms: 4000\n", 1)


def _processor(store: QuotaStore, budget: int, requests: int) -> Processor:
    """Key team1: ``requests`` a minute, and a lifetime budget of ``budget`` tokens,
    hard-capped (a lifetime: its refusal's length does not hang on the time of day)."""
    config = GATEWAY + (
        f"""
quotas:
  rules:
    - {{name: key-minute, subject: api_key, requests_per_minute: {requests}}}
    - name: key-cap
      subject: api_key
      hard_cap: true
      token_quota: {{limit: {budget}, period: lifetime}}
"""
    )
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=store)
    runtime = Runtime(parse_config(config, "gateway.yaml", {}), services)
    return Processor(lambda: runtime, default_stages())


def _answer(tokens: int) -> list[ext.ProcessingRequest]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [{"type": "text", "text": "done"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 4, "output_tokens": tokens - 4},
    }
    return [response_headers(200), response_body(orjson.dumps(message))]


async def _refused(processor: Processor, characters: int) -> tuple[str, dict[str, str]]:
    """The message and headers of the 429 a prompt of ``characters`` characters gets."""
    call = Call(processor, 10, "x" * characters)
    assert not await call.admitted()
    refusal = call.refusal
    assert refusal is not None and refusal.status.code == 429
    headers = {h.header.key: h.header.raw_value.decode() for h in refusal.headers.set_headers}
    return orjson.loads(refusal.body)["error"]["message"], headers


async def _spend(store: QuotaStore, processor: Processor, tokens: int) -> None:
    call = Call(processor, 10, "hi")
    assert await call.admitted()
    await call.finish(_answer(tokens))
    await store.flush()


async def test_a_prompt_larger_than_the_capped_budget_is_told_so_before_another_limits_wait(
    quota_store: QuotaStore,
) -> None:
    processor = _processor(quota_store, budget=100, requests=1)
    await _spend(quota_store, processor, 14)  # the minute's one request: the next is refused for it

    # 150 + 4 prompt tokens: more than the whole budget of 100, which has 86 left.
    message, headers = await _refused(processor, 600)
    # Before: "Rate limit reached ... (rule 'key-minute')" with retry-after up to 60 s,
    # which the SDKs sit out and retry, to meet this refusal.
    assert message.startswith("Prompt too large for the token budget of api_key 'team1'")
    assert "retry-after" not in headers and headers["x-should-retry"] == "false"
    assert headers["x-ratelimit-limit-tokens"] == "100"
    assert headers["x-ratelimit-remaining-tokens"] == "86"


async def test_a_prompt_the_capped_budget_cannot_take_this_period_outlasts_a_minutes_wait(
    quota_store: QuotaStore,
) -> None:
    processor = _processor(quota_store, budget=1000, requests=1)
    await _spend(quota_store, processor, 900)

    # 200 + 4 prompt tokens: the budget has 100 left, and will not have more.
    message, headers = await _refused(processor, 800)
    assert message.startswith("Token budget nearly used for api_key 'team1' (rule 'key-cap')")
    assert "100 tokens left, not enough for this prompt; it does not reset" in message
    assert headers["x-should-retry"] == "false"
    # A prompt that fits is still told the minute's wait, the only one that holds it.
    message, headers = await _refused(processor, 40)
    assert "(rule 'key-minute')" in message
    assert 1 <= int(headers["retry-after"]) <= 60


async def test_a_held_budget_this_prompt_cannot_fit_once_settled_outlasts_a_minutes_wait(
    quota_store: QuotaStore,
) -> None:
    processor = _processor(quota_store, budget=1000, requests=2)
    await _spend(quota_store, processor, 900)
    running = Call(processor, 500, "hi")  # reserves the 100 left, capped: the budget is full
    assert await running.admitted()

    # Both refuse: the minute's requests, and the budget that the running request holds.
    # This prompt does not fit in what the settled requests leave (100 tokens) whatever
    # the running one uses: before, the minute's wait was named (longer than the held
    # budget's 5 s), and the retry met the budget's refusal.
    message, headers = await _refused(processor, 800)
    assert message.startswith("Rate limit reached for api_key 'team1' (rule 'key-cap')")
    assert "900 used and 100 held by running requests; it does not reset" in message
    assert "retry-after" not in headers and headers["x-should-retry"] == "false"
    await running.finish(_answer(60))


async def test_on_a_cluster_a_subject_that_admitted_tells_its_capped_budget_too(
    quota_store: QuotaStore,
) -> None:
    """On a Redis Cluster each subject's script runs on its own (its own slot): the group's
    admitted the request while the key's refused it. What the group's reserved is given
    back, and its hard-capped budget, as it stood, still decides the 429."""
    config = GATEWAY + (
        """
quotas:
  rules:
    - {name: key-minute, subject: api_key, requests_per_minute: 1}
    - {name: team-cap, subject: group, hard_cap: true, token_quota: {limit: 100, period: lifetime}}
"""
    )
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    runtime = Runtime(parse_config(config, "gateway.yaml", {}), services)
    processor = Processor(lambda: runtime, default_stages())
    quota_store._cluster = True  # one script per subject, as on a cluster's nodes
    await _spend(quota_store, processor, 14)

    message, headers = await _refused(processor, 600)
    assert message.startswith("Prompt too large for the token budget of group 'engineering'")
    assert headers["x-ratelimit-remaining-tokens"] == "86"
    await quota_store.flush()
    counter = "test:q:{group:engineering}:team-cap:t:life"
    assert int(await quota_store._client.get(counter)) == 14
    assert await quota_store._client.get(counter + ":held") is None

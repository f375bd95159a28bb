"""A rate limit's 429 to an AWS SDK says when to retry, in the header botocore reads.

The gateway's 429 reaches a Converse client as Bedrock's ``ThrottlingException``,
which boto3 retries (three attempts in its default standard mode) after a backoff of
0-1 s, then 0-2 s, whatever ``retry-after`` says: it reads no ``retry-after``. So a
client over a per-second or a nearly reset limit retried before the window reset and
got the exception after two more refusals. botocore waits ``x-amz-retry-after``
(milliseconds, at most 5 s past its own backoff). A quota that resets much later
(``x-should-retry: false``) is no throttle: boto3 retried its ThrottlingException two
to four times within seconds, each refused, and its adaptive mode slowed the client's
later calls down; it is Bedrock's ``ServiceQuotaExceededException`` (400), which no
retry mode retries (tests/integration/test_quota_refusals_aws_sdk.py).
"""

from __future__ import annotations

import orjson
from botocore.awsrequest import AWSResponse
from botocore.retries.standard import ExponentialBackoff, RetryContext
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.test_converse_review import AUTH, MESSAGES, converse_path
from tests.unit.test_quota_review import runtime_with

PER_MINUTE = """
quotas:
  rules:
    - {name: one-a-minute, subject: api_key, requests_per_minute: 1}
"""
PER_DAY = """
quotas:
  rules:
    - {name: one-a-day, subject: api_key, requests_per_day: 1}
"""


async def second_converse_refusal(
    quota_store: QuotaStore, rules: str, status: int = 429
) -> dict[str, str]:
    """The headers of the refusal (of ``status``) of key team1's second Converse call
    under ``rules``."""
    runtime = runtime_with(quota_store, rules)
    processor = Processor(lambda: runtime, default_stages())
    body = orjson.dumps({"messages": MESSAGES})
    answers: list[ext.ProcessingResponse] = []
    for _ in range(2):
        stream = [request_headers(converse_path(), headers=AUTH), request_body(body)]
        answers = await run_stream(processor, stream)
    refused = answers[-1].immediate_response
    assert refused.status.code == status
    return {h.header.key: h.header.raw_value.decode() for h in refused.headers.set_headers}


async def test_a_limit_that_resets_soon_tells_boto3_how_long_to_wait(
    quota_store: QuotaStore,
) -> None:
    headers = await second_converse_refusal(quota_store, PER_MINUTE)
    assert headers["x-amzn-errortype"] == "ThrottlingException"
    assert "x-should-retry" not in headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-amz-retry-after"] == str(int(headers["retry-after"]) * 1000)


async def test_a_quota_that_resets_much_later_is_no_throttle_boto3_retries(
    quota_store: QuotaStore,
) -> None:
    headers = await second_converse_refusal(quota_store, PER_DAY, status=400)
    assert headers["x-amzn-errortype"] == "ServiceQuotaExceededException"
    assert headers["x-should-retry"] == "false"
    assert "x-amz-retry-after" not in headers


def test_botocore_waits_what_the_header_says_before_retrying_a_throttle() -> None:
    """The header is the one botocore's default retry mode reads: 3 s, not its own
    backoff (half a second at this draw of its jitter)."""
    answer = AWSResponse("http://gateway", 429, {"x-amz-retry-after": "3000"}, None)
    throttled = {"Error": {"Code": "ThrottlingException"}}
    context = RetryContext(attempt_number=1, http_response=answer, parsed_response=throttled)
    assert ExponentialBackoff(random=lambda: 0.5).delay_amount(context) == 3.0

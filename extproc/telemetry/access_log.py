"""The per-request JSON log: one line per request on stdout and/or a rotated file.

The line's fields are schema v1, documented in docs/logging.md and
docs/log-schema.json. No credential is ever written; prompt and completion
text only with ``telemetry.log.include_content``, and then as the guardrails
left it. Building the line is the only work done on the event loop: writing it
is the business of ``log_writer``'s background thread.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from typing import Any

import orjson

from extproc.answer_status import no_answer
from extproc.chargeback.pricing import usd_float
from extproc.config.telemetry_model import LogConfig
from extproc.context import (
    CutAttempt,
    RequestContext,
    image_generation_counts,
    with_cut_attempts,
)
from extproc.errors import REDACTED
from extproc.telemetry.log_writer import (
    LineWriter,
    LostLines,
    RotatingFile,
    default_stdout,
    expand_path,
)
from extproc.translators.base import stream_failure
from extproc.translators.unreadable_answers import unusable_answer

SCHEMA_VERSION = 1
# Fields whose values are the gateway's own words (log-schema.json's enums): never a
# secret, so never rewritten when the request's credential happens to be one of them.
_VOCABULARY = frozenset(("schema_version", "outcome", "auth_method", "quota_decision"))
_AGENT_VOCABULARY = frozenset(("protocol", "kind", "status"))

log = logging.getLogger(__name__)


def access_record(ctx: RequestContext) -> dict[str, Any]:
    """Build the schema v1 log record of one finished request."""
    error = ctx.error or ctx.stream_refusal
    identity = ctx.identity
    usage = ctx.usage
    finished = ctx.elapsed_ms()
    cost = ctx.cost
    cost_usd = cost.usd_float if cost is not None else 0.0
    cost_priced = cost.priced if cost is not None else True
    estimated = ctx.usage_estimated
    cut = ctx.cut_attempts
    cut_field = None
    if cut:
        # Failover attempts cut after their provider started answering: billed, so in the
        # totals (the metrics and the rollup count each apart, under its provider).
        usage = with_cut_attempts(usage, cut)
        picousd = (cost.picousd if cost is not None else 0) + sum(a.cost.picousd for a in cut)
        cost_usd = usd_float(picousd)
        cost_priced = cost_priced and all(a.cost.priced for a in cut)
        estimated = True
        cut_field = [_cut_attempt(a) for a in cut]
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "timestamp": log_timestamp(ctx.started_wall),
        "request_id": ctx.request_id,
        "trace_id": ctx.trace_id,
        "method": ctx.method,
        "path": ctx.path.split("?", 1)[0],
        "route": ctx.route.name if ctx.route else None,
        "provider": ctx.provider,
        "model": ctx.asked_model,
        "group_member": ctx.group_member,
        "upstream_model": ctx.upstream_model,
        "response_model": ctx.response_model,
        "stream": ctx.stream and not ctx.stream_unasked,
        "http_status_code": ctx.response_status,
        "upstream_status_code": ctx.upstream_status,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": usage.cached_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        # The audio parts of the counts above, billed at the audio prices: without them a
        # line's cost_usd could not be checked against its counts (docs/chargeback.md).
        "prompt_audio_tokens": usage.audio_tokens,
        "cached_audio_tokens": usage.cached_audio_tokens,
        "completion_audio_tokens": usage.audio_output_tokens,
        # The image part of completion_tokens (Gemini's image models), at the image price.
        "completion_image_tokens": usage.image_output_tokens,
        # The image part of prompt_tokens (OpenAI's GPT Image models), at the image price.
        "prompt_image_tokens": usage.image_tokens,
        # A rerank's searches, when its provider bills searches (Cohere), at the model's
        # price per search; null for a request billed by tokens.
        "search_units": usage.search_units,
        # The pictures of the Responses API's image generation tool: parts of the counts
        # above, billed at their image model's prices (docs/chargeback.md).
        "image_generation_model": (
            usage.image_generation.model if usage.image_generation is not None else None
        ),
        **image_generation_counts(usage.image_generation),
        # Billed per request on top of the tokens (cost_usd includes them).
        "server_tool_requests": dict(usage.server_tool_requests) or None,
        "usage_reported": ctx.usage_reported,
        "usage_estimated": estimated,
        "finish_reasons": list(ctx.finish_reasons) if ctx.finish_reasons else None,
        # Exact: the float's shortest form is the picodollar amount (docs/chargeback.md).
        "cost_usd": cost_usd,
        "cost_priced": cost_priced,
        # The tier the provider reported serving at, which priced cost_usd (chargeback.md).
        "service_tier": ctx.service_tier,
        # Where the provider ran the request, whose multiplier priced cost_usd.
        "inference_geo": ctx.inference_geo,
        # Priced at the model's long-context prices (its prompt above their threshold).
        "long_context": cost is not None and cost.long_context,
        "cut_attempts": cut_field,
        # A failover request left before any answer, charged at its primary because the
        # store could not say which attempt was in flight (stages.attempt_in_flight).
        "attempt_unknown": ctx.attempt_unknown,
        "api_key_id": identity.api_key_id,
        "user_id": identity.user_id,
        "group_id": identity.group_id,
        "auth_method": identity.method,
        "jwt_provider": identity.jwt_provider,
        "claims": identity.claims or None,
        "latency_ms": round(finished, 3),
        "time_to_first_byte_ms": _since(ctx, ctx.started, ctx.first_byte_at),
        "time_to_first_token_ms": _ms(ctx.time_to_first_token_s()),
        "upstream_latency_ms": _since(ctx, ctx.upstream_sent_at, ctx.response_ended_at),
        "quota_decision": ctx.quota_decision,
        "quota_rule": ctx.quota_rule,
        "guardrails": list(ctx.guardrail_decisions) if ctx.guardrail_decisions else None,
        "outcome": _outcome(ctx),
        "error_type": error.error_type if error else None,
        "error_code": error.code if error else None,
        "error_message": error.message if error else None,
    }
    content = ctx.content
    if content is not None and ctx.runtime.config.telemetry.log.include_content:
        record["prompt"] = content.prompt(ctx.body)
        record["completion"] = content.completion()
        record["content_truncated"] = content.truncated
    if ctx.agent is not None:
        record["agent"] = ctx.agent.log_fields(ctx.started)
    return record


# The last second written, and its text up to the seconds: requests in the same second
# share it. One tuple, replaced whole, so a reader never sees one second's text with
# another's number.
_last_second: tuple[float, str] = (math.nan, "")


def log_timestamp(wall: float) -> str:
    """``wall`` (seconds since the epoch) as the line's UTC time to the millisecond,
    ``2026-01-02T03:04:05.678Z``: the text of ``datetime.fromtimestamp(wall, UTC)
    .isoformat(timespec="milliseconds")`` with ``Z``, without building a datetime per
    request (about a microsecond, the costliest field of the line).

    The microseconds are rounded as ``fromtimestamp`` rounds them (half to even, a
    fraction that rounds to a whole second carried into it), then cut to milliseconds
    as ``isoformat`` cuts them."""
    global _last_second
    fraction, whole = math.modf(wall)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        micros -= 1_000_000
        whole += 1.0
    elif micros < 0:
        micros += 1_000_000
        whole -= 1.0
    second, text = _last_second
    if second != whole:
        text = datetime.fromtimestamp(whole, UTC).isoformat(timespec="seconds")[:-6]
        _last_second = (whole, text)
    return f"{text}.{micros // 1000:03d}Z"


def _cut_attempt(attempt: CutAttempt) -> dict[str, Any]:
    return {
        "provider": attempt.provider,
        "model": attempt.model,
        "prompt_tokens": attempt.usage.prompt_tokens,
        "completion_tokens": attempt.usage.completion_tokens,
        "cost_usd": attempt.cost.usd_float,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _since(ctx: RequestContext, start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, end - start) * 1000.0, 3)


def _outcome(ctx: RequestContext) -> str:
    if ctx.error is not None:
        # Estimated usage with an error: the provider failed inside a stream (partial_usage);
        # so did one it failed before answering, which is charged nothing; or its
        # success answer was an error (translators.answer_errors) or unreadable
        # (translators.unreadable_answers).
        failed = (
            ctx.usage_estimated
            or unusable_answer(ctx.error)
            or (ctx.stream and stream_failure(ctx.translator) is not None)
        )
        return "upstream_error" if failed else "rejected"
    if ctx.stream_refusal is not None:
        return "rejected"  # refused inside its stream: the client read the refusal
    if ctx.aborted:
        return "aborted"
    if no_answer(ctx.response_status):
        return "upstream_error"
    return "completed"


def _redacted_line(record: dict[str, Any], credential: str) -> bytes:
    """``record``'s line with ``credential`` hidden in its string values."""
    redacted = {
        name: value if name in _VOCABULARY else _without(value, credential)
        for name, value in record.items()
    }
    agent = record.get("agent")
    if isinstance(agent, dict):
        redacted["agent"] = {
            name: value if name in _AGENT_VOCABULARY else _without(value, credential)
            for name, value in agent.items()
        }
    try:
        return orjson.dumps(redacted)
    except TypeError:
        return _dumps_unbounded(redacted)


def _without(value: Any, credential: str) -> Any:
    """``value`` with ``credential`` replaced by ``[redacted]`` in each of its strings."""
    if isinstance(value, str):
        return value.replace(credential, REDACTED)
    if isinstance(value, dict):
        return {name: _without(item, credential) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without(item, credential) for item in value]
    return value


def _dumps_unbounded(record: dict[str, Any]) -> bytes:
    """``record`` as JSON when orjson refuses it: an integer past 64 bits (a provider's
    token count of 2**64 - 1, an unsigned -1, plus the completion's). The line is the
    audit record: written with the count as reported, never lost. Off the hot path."""
    log.warning(
        "request %s: a value of its log line is out of orjson's range, written as is",
        record.get("request_id"),
    )
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode(errors="replace")


class AccessLog:
    """Encodes request records and hands the lines to the writer thread."""

    def __init__(
        self,
        *,
        stdout: bool = True,
        file: str | None = None,
        max_bytes: int = 0,
        backup_count: int = 0,
        queue_size: int = 100_000,
        on_lost: LostLines | None = None,
    ) -> None:
        self._writer: LineWriter | None = None
        if stdout or file:
            rotating = (
                RotatingFile(expand_path(file), max_bytes=max_bytes, backup_count=backup_count)
                if file
                else None
            )
            self._writer = LineWriter(
                stdout=default_stdout() if stdout else None,
                file=rotating,
                queue_size=queue_size,
                on_lost=on_lost,
            )

    @classmethod
    def from_config(cls, config: LogConfig, on_lost: LostLines | None = None) -> AccessLog:
        return cls(
            stdout=config.stdout,
            file=config.file,
            max_bytes=config.max_bytes,
            backup_count=config.backup_count,
            queue_size=config.queue_size,
            on_lost=on_lost,
        )

    @property
    def dropped(self) -> int:
        """Lines lost because the sink did not keep up (see ``LineWriter``)."""
        writer = self._writer
        return writer.dropped + writer.failed if writer is not None else 0

    def write(self, record: dict[str, Any], credential: str | None = None) -> None:
        """Write one record. ``credential``, the request's own key or token, is
        replaced by ``[redacted]`` wherever the line would show it: a client may send
        it where a name the line records as sent goes (``credential_cleaner``)."""
        try:
            line = orjson.dumps(record)
        except TypeError:
            line = _dumps_unbounded(record)
        if credential is not None and orjson.dumps(credential)[1:-1] in line:
            # Rare, so paid only then: the credential is hidden in the line's string
            # values, never in its field names, its numbers or the gateway's own words
            # (a client presenting "api_key_id" or "rejected" as its key renamed that
            # field or changed its outcome, and the line broke its schema).
            line = _redacted_line(record, credential)
        self.emit(line + b"\n")

    def emit(self, line: bytes) -> None:
        """Send one encoded line to the sinks, without waiting for them."""
        if self._writer is not None:
            self._writer.submit(line)

    def close(self) -> None:
        """Write out what is queued and close the file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

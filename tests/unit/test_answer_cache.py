"""Kept phase answers: the same message as one built anew, never shared between requests."""

from __future__ import annotations

import dataclasses

from extproc.answer_cache import AnswerCache
from extproc.context import ModeOverride, PhaseOutput
from extproc.envoy_messages import phase_response
from extproc.headers import METADATA_NAMESPACE


def body_answer(user: str = "alice", **extra: str | float) -> PhaseOutput:
    """What a request body's answer carries on the default path (the route re-pick)."""
    out = PhaseOutput(clear_route_cache=True)
    out.set_headers.update({"x-aigw-cluster": "provider_mock", "authorization": "Bearer p"})
    out.remove_headers.append("x-api-key")
    out.metadata = {"user_id": user, "route": "openai-chat", "model": "gpt-4o-mini", **extra}
    return out


def test_a_kept_answer_is_the_answer_built_for_the_request() -> None:
    cache = AnswerCache()
    first = cache.phase_response("request_body", body_answer())
    again = cache.phase_response("request_body", body_answer())
    assert first == again == phase_response("request_body", body_answer())
    other = cache.phase_response("request_body", body_answer(user="bob"))
    fields = other.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields
    assert fields["user_id"].string_value == "bob"


def test_reading_one_answer_changes_no_later_answer() -> None:
    cache = AnswerCache()
    first = cache.phase_response("request_body", body_answer())
    # Indexing a protobuf map inserts the key: a copy of its own takes it.
    _ = first.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields["error_type"]
    later = cache.phase_response("request_body", body_answer())
    assert "error_type" not in later.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields


def test_every_part_of_the_answer_tells_kept_answers_apart() -> None:
    cache = AnswerCache()
    variants = [
        PhaseOutput(remove_headers=["authorization"]),
        PhaseOutput(remove_headers=["authorization"], client_api="anthropic"),
        PhaseOutput(remove_headers=["authorization"], mode_override=ModeOverride()),
        PhaseOutput(remove_headers=["authorization", "x-api-key"]),
        PhaseOutput(set_headers={"authorization": "Bearer p"}),
        PhaseOutput(set_headers={"authorization": "Bearer p"}, clear_route_cache=True),
    ]
    for phase in ("request_headers", "response_headers"):
        for out in variants:
            assert cache.phase_response(phase, out) == phase_response(phase, out)


def test_answers_of_one_request_alone_are_built_not_kept() -> None:
    cache = AnswerCache()
    counted = body_answer(prompt_tokens=120.0)  # counts vary with every answer
    rewritten = body_answer()
    rewritten.body = b'{"model":"gpt-4o-mini"}'
    captured = body_answer(input_messages="x" * 1000)
    signed = body_answer()  # a SigV4 signature holds the request's time and body hash
    signed.set_headers.update({"authorization": "AWS4-HMAC-SHA256 ...", "x-amz-date": "20261206T"})
    for out in (counted, rewritten, captured, signed):
        assert cache.phase_response("request_body", out) == phase_response("request_body", out)
    assert cache._answers == {}


def test_the_cache_starts_again_when_full() -> None:
    cache = AnswerCache(size=2)
    for user in ("a", "b", "c"):
        cache.phase_response("request_body", body_answer(user=user))
    assert len(cache._answers) == 1
    assert cache.phase_response("request_body", body_answer(user="a")) == phase_response(
        "request_body", body_answer(user="a")
    )


def test_the_key_covers_every_part_of_a_phase_output() -> None:
    """A field added to ``PhaseOutput`` that the answer is built from must join the cache's
    key (``answer_cache._key``), or requests differing only in it would share one answer."""
    assert {part.name for part in dataclasses.fields(PhaseOutput)} == {
        "set_headers",
        "remove_headers",
        "body",
        "clear_route_cache",
        "mode_override",
        "metadata",
        "client_api",
        "answer",
        "reset",
    }

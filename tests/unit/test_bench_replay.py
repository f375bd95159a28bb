"""Bench row (r): the answers it replays are the gateway's own answers to the bench request."""

from __future__ import annotations

from pathlib import Path

from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode

from benchmarks.configs import GATEWAY_CONFIG
from benchmarks.replay_processor import capture_answers, read_answers, write_answers
from extproc import headers
from extproc.config.loader import load_config


def test_the_replayed_answers_carry_the_gateways_routing_credentials_and_usage(
    tmp_path: Path,
) -> None:
    config = load_config(GATEWAY_CONFIG, {"MOCK_LLM_ADDRESS": "127.0.0.1:9"})
    path = tmp_path / "answers.json"
    write_answers(path, capture_answers(config))
    answers = read_answers(path)
    # The default config's lean path, as the gateway chooses it from Envoy's body hints:
    # no response-headers message, the whole answer in one buffered body message.
    assert list(answers) == ["request_headers", "request_body", "response_body"]
    mode = answers["request_headers"].mode_override
    assert mode.response_header_mode == ProcessingMode.SKIP
    assert mode.response_body_mode == ProcessingMode.BUFFERED

    removed = answers["request_headers"].request_headers.response.header_mutation.remove_headers
    assert "authorization" in removed
    body = answers["request_body"].request_body.response
    assert body.clear_route_cache
    set_headers = {h.header.key: h.header.raw_value for h in body.header_mutation.set_headers}
    assert set_headers[headers.CLUSTER] == b"provider_mock"
    assert set_headers["authorization"] == b"Bearer mock-provider-key"
    metadata = answers["response_body"].dynamic_metadata.fields[headers.METADATA_NAMESPACE]
    usage = metadata.struct_value.fields
    assert usage["prompt_tokens"].number_value == 152
    assert usage["completion_tokens"].number_value == 9
    assert usage["api_key_id"].string_value == "team1"

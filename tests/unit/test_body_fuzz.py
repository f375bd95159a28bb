"""Property: whatever body a client sends, the processor answers and never raises."""

from __future__ import annotations

import asyncio

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.config import load_config
from extproc.testing import processor_for, request_body, request_headers, run_stream

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
chat_like = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["gpt-4o-mini", "nope", ""]) | json_values,
        "messages": st.lists(
            st.fixed_dictionaries({}, optional={"role": json_values, "content": json_values}),
            max_size=3,
        )
        | json_values,
        "stream": json_values,
        "stream_options": json_values,
    },
)
# orjson refuses integers past 64 bits: such a body must be a clean 400 too.
HUGE_INTEGER = b'{"model":"gpt-4o-mini","messages":[{"role":"user"}],"n":1234567890123456789012345}'
bodies = (
    st.binary(max_size=200)
    | st.just(HUGE_INTEGER)
    | chat_like.map(orjson.dumps)
    | json_values.map(orjson.dumps)
)

PROCESSOR = processor_for(load_config("config/gateway.yaml", environ={}))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(bodies)
def test_any_body_gets_an_answer_never_an_exception(body: bytes) -> None:
    answers = asyncio.run(
        run_stream(
            PROCESSOR,
            [
                request_headers("/v1/chat/completions", headers={"authorization": "team1-key"}),
                request_body(body),
            ],
        )
    )
    assert len(answers) == 2
    last = answers[1]
    if last.HasField("immediate_response"):
        status = last.immediate_response.status.code
        assert 400 <= status < 500 or status == 503
        assert orjson.loads(last.immediate_response.body)["error"]["message"]
    else:
        assert last.request_body.response.clear_route_cache

"""An image sent to Claude as a data URL is read in time in its length, not its square.

The gateway reads an OpenAI image part's data URL (``data:image/png;base64,...``) into
Anthropic's base64 source. The pattern, ``data:([^;,]+)[^,]*;base64,(.*)``, let the media
type and the parameters after it split one run of characters any way: a URL with no
``;`` or ``,`` was read again for every split. A client's ``data:`` and 60,000
characters took 2.4 s of one worker's event loop, and the body limit (1 MiB by default)
allows minutes. Each parameter is now read from its ``;``: the same URLs are taken, with
the same media type and data.
"""

from __future__ import annotations

import re

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.testing import request_body, run_stream
from extproc.translators import openai_anthropic
from tests.unit.test_fuzz_request_lines import AUTH, LOG, PROCESSOR, _headers_message

# The pattern as it was, the reference for what is taken.
QUADRATIC = re.compile(r"data:(?P<media>[^;,]+)[^,]*;base64,(?P<data>.*)", re.DOTALL)
PIECES = ["data:", "image/png", "a", ";", ",", ";base64", ";base64,", "base64", "=", " ",
          "\n", "charset=utf-8", "é", "/"]  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_the_data_urls_taken_are_the_ones_taken_before(url: str) -> None:
    found = openai_anthropic._DATA_URL.fullmatch(url)
    before = QUADRATIC.fullmatch(url)
    assert (found is None) == (before is None)
    if found is not None and before is not None:
        assert (found["media"], found["data"]) == (before["media"], before["data"])


async def test_a_long_data_url_without_base64_is_refused_with_a_400() -> None:
    url = "data:image/png" + "A" * 200_000
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": url}}]  # fmt: skip
    body = {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": content}]}
    pairs = [(":method", b"POST"), (":path", b"/v1/chat/completions"), (":authority", b"gateway"),
             ("content-type", b"application/json"), *AUTH]  # fmt: skip
    answers = await run_stream(
        PROCESSOR, [_headers_message(pairs, False), request_body(orjson.dumps(body))]
    )

    reply = answers[-1].immediate_response
    assert reply.status.code == 400
    error = orjson.loads(reply.body)["error"]
    assert error["message"] == "an image must be an http(s) URL or a base64 data URL"
    assert error["param"] == "messages[0].content[1].image_url.url"
    line = LOG.lines()[-1]
    assert line["http_status_code"] == 400

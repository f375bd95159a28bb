# ruff: noqa: RUF001  (Cyrillic and Greek addresses, and the multiplication sign, on purpose)
"""The EMAIL builtin finds addresses written in accented, Greek and Cyrillic letters.

Mail systems have carried internationalised addresses (RFC 6531) for years:
``müller@bücher.de``, ``josé.álvarez@correo.es``, ``почта@пример.рф``. The builtin
took ASCII letters only: ``müller@bücher.de`` reached the provider whole (the
domain's ``ü`` broke the match), and a Cyrillic address was never seen. An address
followed at once by Chinese, Japanese or Korean text (``x@y.com으로``) was refused as
"going on", and reached the provider too. Letters of
scripts written without spaces are still no part of an address: next to one they are the
sentence around it, not the address.
"""

from __future__ import annotations

import orjson
import pytest

from extproc.config.guard_model import Builtin
from extproc.guardrails.detectors import builtin
from tests.unit.guard_helpers import config_with, masked_openai_stream, openai_stream_text
from tests.unit.test_guard_flow import Gateway, upstream_body


def found(text: str) -> list[str]:
    return [text[span.start : span.end] for span in builtin(Builtin.EMAIL).find(text)]


@pytest.mark.parametrize(
    ("text", "addresses"),
    [
        ("schreib an müller@bücher.de bitte", ["müller@bücher.de"]),
        ("José.Álvarez@correo.es, gracias", ["José.Álvarez@correo.es"]),
        ("почта: почта@пример.рф.", ["почта@пример.рф"]),
        ("δοκιμή@παράδειγμα.δοκιμή", ["δοκιμή@παράδειγμα.δοκιμή"]),
        ("Việt: nguyễn@ví-dụ.vn", ["nguyễn@ví-dụ.vn"]),
        # A decomposed accent: "e" and a combining acute.
        ("rene\u0301e@example.fr", ["rene\u0301e@example.fr"]),
        ("user@example.xn--p1ai ok", ["user@example.xn--p1ai"]),
        # The sentence around an address in scripts written without spaces stays.
        ("请联系jane@example.com请回复", ["jane@example.com"]),
        ("x@y.com으로 보내세요", ["x@y.com"]),
        ("メールはops@example.jpまで", ["ops@example.jp"]),
        # Signs are no letters.
        ("a×b@c.de", ["b@c.de"]),
        # What was no address is still none.
        ("no tld jane@localhost", []),
        ("a 25-letter tld a@b." + "c" * 25, []),
    ],
)
def test_the_email_builtin_finds_addresses_in_these_letters(
    text: str, addresses: list[str]
) -> None:
    assert found(text) == addresses


PII = {"policies": [{"name": "pii", "request": [
    {"name": "pii", "builtins": ["EMAIL"], "action": "mask"}]}]}  # fmt: skip


async def prompt_the_provider_got(said: str) -> str:
    """The user's chat message ``said``, as the provider received it through the chat
    route guarded by the EMAIL builtin (mask)."""
    gateway = Gateway(config_with(PII, {"openai-chat": {"guardrails": "pii"}}))
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": said}]})
    answers = await gateway.send("/v1/chat/completions", body)
    content: str = upstream_body(answers[1])["messages"][0]["content"]
    return content


async def test_an_accented_address_in_a_prompt_does_not_reach_the_provider() -> None:
    sent = await prompt_the_provider_got("Schreib an müller@bücher.de und почта@пример.рф, danke.")
    assert sent == "Schreib an <EMAIL> und <EMAIL>, danke."


async def test_an_address_a_tool_wrote_with_escapes_is_masked() -> None:
    # json.dumps writes "ü" as "\u00fc": the guard reads the escape as the letter.
    sent = await prompt_the_provider_got('{"to": "m\\u00fcller@b\\u00fccher.de"}')
    assert "cher.de" not in sent
    assert "<EMAIL>" in sent


def test_a_cyrillic_address_cut_over_stream_chunks_is_masked() -> None:
    out = masked_openai_stream(["EMAIL"], ["Пишите на поч", "та@прим", "ер.рф сегодня"])
    assert openai_stream_text(out) == "Пишите на <EMAIL> сегодня"
    assert "пример".encode() not in out

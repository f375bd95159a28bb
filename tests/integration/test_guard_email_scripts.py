# ruff: noqa: RUF001  (addresses and punctuation of other scripts, on purpose)
"""Addresses in Arabic, Hebrew, Devanagari, Thai, Korean and Japanese letters are masked
before the provider, through the real Envoy, with the official OpenAI client.

Before, a prompt holding ``مستخدم@مثال.مصر`` or ``사용자@예시.한국`` reached the provider
whole under an EMAIL mask guard; now the provider (the mock records what it received)
gets ``<EMAIL>`` in their place and the sentence around them as the user wrote it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import guarded_config, mock_requests, running_stack, write_config

PII = {"name": "pii", "request": [{"name": "pii", "builtins": ["EMAIL"], "action": "mask"}]}


@pytest.fixture(scope="module")
def email_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guard-email-scripts")
    with running_stack(workdir, write_config(workdir, guarded_config(PII, "openai-chat"))) as stack:
        yield stack


def prompt_the_provider_got(stack: LocalStack, said: str) -> str:
    """The user's chat message ``said``, sent with the OpenAI client through Envoy, as the
    provider received it."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": said}]
    )
    assert answer.choices[0].message.content
    content: str = mock_requests(stack)[-1]["json"]["messages"][0]["content"]
    return content


@pytest.mark.parametrize(
    ("said", "sent"),
    [
        ("راسلني على مستخدم@مثال.مصر، شكرا", "راسلني على <EMAIL>، شكرا"),
        ("כתבו אל משתמש@דוגמה.ישראל׃", "כתבו אל <EMAIL>׃"),
        ("मेरा पता उपयोगकर्ता@उदाहरण.भारत है।", "मेरा पता <EMAIL> है।"),
        ("ติดต่อ ผู้ใช้@ตัวอย่าง.ไทย ได้เลย", "ติดต่อ <EMAIL> ได้เลย"),
        ("메일은 사용자@예시.한국 입니다", "메일은 <EMAIL> 입니다"),
        ("請寄到jane@例子.中国。ユーザー@例え.テスト", "請寄到<EMAIL>。<EMAIL>"),
    ],
)
def test_an_address_in_another_script_reaches_the_provider_masked(
    email_stack: LocalStack, said: str, sent: str
) -> None:
    assert prompt_the_provider_got(email_stack, said) == sent

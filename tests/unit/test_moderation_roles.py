"""Which messages moderation reads (``roles``): a role no message carries is a config
error, not a guard that passes everything; and OpenAI's ``developer`` messages, the
system prompt of its newer models, are read wherever ``system`` is."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config.loader import ConfigError
from extproc.testing import serve_mock
from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_flow import Gateway, immediate


def moderated(mock_url: str, **moderation: Any) -> dict[str, Any]:
    return {
        "moderation": [
            {"name": "mod", "base_url": f"{mock_url}/v1", "api_key": "mock-key", **moderation}
        ],
        "policies": [{"name": "mod", "request": [{"name": "moderated", "moderation": "mod"}]}],
    }


@pytest.mark.parametrize("roles", [["users"], ["User"], ["user", "System"], []])
def test_a_role_no_message_has_is_refused_at_load(roles: list[str]) -> None:
    # Before, `roles: [users]` loaded, and the guard sent nothing to the service and
    # logged every request as a pass: moderation off, and nothing said so.
    with pytest.raises(ConfigError) as refused:
        config_with(
            moderated("http://127.0.0.1:9", roles=roles), {"openai-chat": {"guardrails": "mod"}}
        )
    assert "roles" in str(refused.value)


async def test_a_developer_message_is_moderated_where_system_messages_are() -> None:
    async with serve_mock() as mock_url:
        config = config_with(
            moderated(mock_url, roles=["user", "system"]), {"openai-chat": {"guardrails": "mod"}}
        )
        gateway = Gateway(config)
        for role in ("system", "developer"):
            body = orjson.dumps(
                {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": role, "content": "explain how to build a bomb"},
                        {"role": "user", "content": "go on"},
                    ],
                }
            )
            answers = await gateway.send("/v1/chat/completions", body)
            assert answers[-1].HasField("immediate_response"), f"{role} passed unread"
            status, error = immediate(answers[-1])
            assert status == 403
            assert "flagged for illicit/violent" in error["error"]["message"]

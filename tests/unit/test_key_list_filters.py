"""Finding keys among many: ``keys list`` filtered by user, group, status, expiry, source, label.

Before, ``keys list`` (``ListKeys``) had no filter: an operator with hundreds of keys
looked for a team's keys, or the ones expiring this week, by reading them all (``grep``
cannot compare times). The gateway now applies the filters to its one pass over the
store's records and answers only the keys asked for; a filter it cannot apply (a
misspelt status, "revoked", which no listed key has) is refused, not answered "none".
Through a real Valkey, the management API and the CLI.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from extproc.auth.stored_keys import StoredKeys
from extproc.management.v1 import management_pb2 as pb
from tests.unit.test_stored_keys import PREFIX, Api, api, client, keys, new_key

__all__ = ["api", "client", "keys"]  # test_stored_keys's fixtures
DAY_S = 86400.0


@pytest.fixture
async def many(keys: StoredKeys, client: Any) -> None:
    """The config's team1 (alice, engineering) and team2 (bob, marketing), and stored keys:
    research's ci-bot (expires in 3 days) and nightly (expired), engineering's deploy
    (never expires, rotated with a day of grace) and carol's other key, ml (in 20 days)."""
    now = time.time()
    await keys.create(new_key("ci-bot", expires_at=now + 3 * DAY_S, labels={"team": "ml"}))
    earlier = StoredKeys(client, PREFIX, clock=lambda: now - 2 * DAY_S)
    await earlier.create(new_key("nightly", expires_at=now - DAY_S))
    await keys.create(new_key("deploy", user_id="dave", group_id="engineering"))
    await keys.rotate("deploy", DAY_S)
    await keys.create(new_key("ml", group_id="ml", expires_at=now + 20 * DAY_S))


async def listed(api: Api, **filters: Any) -> list[str]:
    answer = await api.call("ListKeys", pb.ListKeysRequest(**filters))
    return [key.id for key in answer.keys]


@pytest.mark.usefixtures("many")
@pytest.mark.parametrize(
    ("filters", "ids"),
    [
        ({}, ["team1", "team2", "ci-bot", "deploy", "ml", "nightly"]),
        ({"group_id": "research"}, ["ci-bot", "nightly"]),
        ({"group_id": "engineering"}, ["team1", "deploy"]),
        ({"user_id": "carol"}, ["ci-bot", "ml", "nightly"]),
        ({"status": ["expired"]}, ["nightly"]),
        ({"status": ["rotating"]}, ["deploy"]),
        # A key in a rotation's grace works: it is active too.
        ({"status": ["active"]}, ["team1", "team2", "ci-bot", "deploy", "ml"]),
        ({"status": ["expired", "rotating"]}, ["deploy", "nightly"]),
        ({"status": ["disabled"]}, []),
        # Expiring within a week: not the expired one, not the one in 20 days.
        ({"expiring_within_seconds": 7 * DAY_S}, ["ci-bot"]),
        ({"expiring_within_seconds": 30 * DAY_S}, ["ci-bot", "ml"]),
        ({"source": "config"}, ["team1", "team2"]),
        ({"source": "store", "user_id": "alice"}, []),
        ({"labels": {"team": "ml"}}, ["ci-bot"]),
        ({"user_id": "carol", "group_id": "research", "status": ["active"]}, ["ci-bot"]),
    ],
)
async def test_the_list_has_only_the_keys_every_filter_given_lets_through(
    api: Api, filters: dict[str, Any], ids: list[str]
) -> None:
    assert await listed(api, **filters) == ids


@pytest.mark.usefixtures("many")
@pytest.mark.parametrize(
    ("filters", "said"),
    [
        ({"status": ["revoked"]}, "a revoked key is deleted, not listed"),
        ({"status": ["expierd"]}, "unknown status 'expierd'; did you mean 'expired'?"),
        ({"expiring_within_seconds": -1.0}, "expiring_within_seconds must be"),
        ({"expiring_within_seconds": float("inf")}, "expiring_within_seconds must be"),
        ({"source": "file"}, "unknown source 'file'"),
        # Before: "no API key passes these filters", which an operator asking for the
        # keys expired or expiring this week read as "none".
        (
            {"status": ["expired"], "expiring_within_seconds": 7 * DAY_S},
            "status 'expired' and expiring_within_seconds together match no key",
        ),
    ],
)
async def test_a_filter_that_cannot_be_applied_is_refused_not_answered_none(
    api: Api, filters: dict[str, Any], said: str
) -> None:
    code, details = await api.refusal("ListKeys", pb.ListKeysRequest(**filters))

    assert code == "INVALID_ARGUMENT" and said in details


@pytest.mark.usefixtures("many")
async def test_the_cli_filters_and_prints_json_with_one_flag(api: Api) -> None:
    code, out, err = await api.cli(
        "keys", "list", "--group", "research", "--status", "active,expired", "--json"
    )

    assert (code, err) == (0, "")
    assert [key["id"] for key in orjson.loads(out)] == ["ci-bot", "nightly"]
    code, out, _ = await api.cli("keys", "list", "--expiring-within", "7d", "--source", "store")
    assert code == 0 and out.splitlines()[1].startswith("ci-bot ")
    assert len(out.splitlines()) == 2
    code, out, _ = await api.cli("keys", "list", "--user", "nobody")
    assert (code, out) == (0, "no API key passes these filters\n")
    code, out, err = await api.cli("keys", "list", "--status", "revoked")
    assert (code, out) == (2, "") and "a revoked key is deleted, not listed" in err
    code, out, err = await api.cli("keys", "list", "--expiring-within", "0")
    assert code == 2 and "expected a duration above 0" in err
    code, out, err = await api.cli(
        "keys", "list", "--status", "expired", "--expiring-within", "7d"
    )  # fmt: skip
    assert (code, out) == (2, "") and "ask for each on its own" in err
    # With another status beside it, the filters can match: rotating keys expiring soon.
    code, out, _ = await api.cli(
        "keys", "list", "--status", "expired,rotating", "--expiring-within", "7d"
    )  # fmt: skip
    assert (code, out) == (0, "no API key passes these filters\n")


@pytest.mark.parametrize(
    "spelled",
    [("--expiring-within", "-1d"), ("--expiring-within=-1d",), ("--expiring-within", "-90")],
)
async def test_a_negative_expiring_within_is_refused_however_it_is_spelt(
    api: Api, spelled: tuple[str, ...]
) -> None:
    code, out, err = await api.cli("keys", "list", *spelled)

    # Before, "-1d" after a space was taken for an option: "expected one argument".
    assert (code, out) == (2, "")
    assert "not a negative time: '-" in err and "--status expired" in err, err


@pytest.mark.parametrize("command", ["rotate", "renew"])
async def test_a_negative_grace_is_refused_as_one_with_or_without_equals(
    api: Api, command: str
) -> None:
    renewal = ("--expires", "2031-01-01T00:00:00Z", "--rotate") if command == "renew" else ()
    for spelled in (("--grace", "-1h"), ("--grace=-1h",)):
        code, out, err = await api.cli("keys", command, "--id", "ci-bot", *renewal, *spelled)

        assert (code, out) == (2, "")
        assert "--grace: expected a duration such as 90, 15m, 1h or 7d, not a negative" in err

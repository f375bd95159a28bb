"""API keys at the edges of their life: loaded from a Secret directory, looked up at once.

An operator mounts keys as a directory. Two files holding one secret are two identities
for one credential: the gateway refuses the config and names both files (never the
secret), at start, in ``check-config`` and on reload. A directory the gateway cannot
read is a config error like any other, not a traceback. On the request path, many
requests arriving at once with a key created at run time and not yet cached cost the
store one read, however many of them there are and whichever of them give up.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from extproc.auth.api_keys import ApiKey, ApiKeyStore, key_digest
from extproc.auth.stored_keys import StoredKeys
from extproc.cli import main
from extproc.config.auth_model import ApiKeyConfig, AuthConfig
from extproc.config.loader import ConfigError, load_config
from extproc.config.model import GatewayConfig
from extproc.config.reload import ConfigReloader
from extproc.runtime import Runtime, Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics

SHARED = "one-secret-for-two"


def keys_from(directory: Path, *entries: ApiKeyConfig) -> ApiKeyStore:
    return ApiKeyStore(AuthConfig(api_keys=entries, api_key_directory=str(directory)))


def refusal(directory: Path, *entries: ApiKeyConfig) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        keys_from(directory, *entries)
    assert SHARED not in str(caught.value)
    return caught.value


# --- One secret in two places of a Secret directory ------------------------------------


def test_two_directory_files_with_one_secret_are_refused_naming_both(tmp_path: Path) -> None:
    (tmp_path / "alice").write_text(SHARED + "\n")
    (tmp_path / "bob").write_text(SHARED + "\n")
    (tmp_path / "carol").write_text("carols-own-secret\n")
    assert refusal(tmp_path).problems == [
        "auth.api_key_directory/bob: the same secret as auth.api_key_directory/alice; "
        "give each key a secret of its own"
    ]


def test_a_directory_file_with_a_config_keys_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / "alice").write_text(SHARED)
    problems = refusal(tmp_path, ApiKeyConfig(id="ops", key=SHARED, group_id="sre")).problems
    assert problems == [
        "auth.api_key_directory/alice: the same secret as auth.api_keys[0] (ops); "
        "give each key a secret of its own"
    ]


def test_a_file_sharing_the_secret_of_a_file_an_entry_names_is_refused(tmp_path: Path) -> None:
    # `bob` has an entry giving it a group (and so its quotas); `alice` is a bare file.
    # Kept, one of the two identities would silently never apply to any request.
    (tmp_path / "alice").write_text(SHARED)
    (tmp_path / "bob").write_text(SHARED)
    problems = refusal(tmp_path, ApiKeyConfig(id="bob", group_id="research")).problems
    assert problems == [
        "auth.api_key_directory/alice: the same secret as auth.api_keys[0] (bob); "
        "give each key a secret of its own"
    ]


def test_two_entries_with_one_secret_name_each_other(tmp_path: Path) -> None:
    problems = refusal(
        tmp_path, ApiKeyConfig(id="a", key=SHARED), ApiKeyConfig(id="b", key=SHARED)
    ).problems
    assert problems == [
        "auth.api_keys[1] (b): the same secret as auth.api_keys[0] (a); "
        "give each key a secret of its own"
    ]


def write_config(path: Path, directory: Path) -> None:
    path.write_text(
        "providers:\n"
        '  - {name: mock, base_url: "http://127.0.0.1:8089/v1", api_key: provider-key-123}\n'
        "models:\n  - {name: gpt-4o-mini, provider: mock}\n"
        f"auth:\n  api_key_directory: {directory}\n"
    )


def test_check_config_refuses_a_secret_shared_by_two_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / "alice").write_text(SHARED)
    (directory / "bob").write_text(SHARED)
    config = tmp_path / "gateway.yaml"
    write_config(config, directory)
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "auth.api_key_directory/bob: the same secret as auth.api_key_directory/alice" in err
    assert SHARED not in err
    assert "Traceback" not in err


async def test_a_secret_update_that_shares_a_secret_is_a_refused_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / "alice").write_text("alices-own-secret")
    path = tmp_path / "gateway.yaml"
    write_config(path, directory)
    services = Services(GatewayMetrics(), AccessLog(stdout=False))
    serving = [Runtime(load_config(path, {}), services)]

    async def apply(config: GatewayConfig) -> None:
        serving.append(Runtime(config, services))

    results: list[bool] = []
    reloader = ConfigReloader(path, apply, results.append)
    (directory / "bob").write_text("alices-own-secret")
    with caplog.at_level(logging.ERROR, logger="extproc.config.reload"):
        assert await reloader.reload() is False
    assert results == [False] and len(serving) == 1  # the running keys keep serving
    found = serving[-1].api_keys.lookup("alices-own-secret")
    assert found is not None and found.id == "alice"
    assert "the same secret as auth.api_key_directory/alice" in caplog.text
    assert "alices-own-secret" not in caplog.text


# --- A directory the gateway cannot read ----------------------------------------------


def test_an_unreadable_directory_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / "team1").write_text("team1-secret-key")
    directory.chmod(0o311)  # searchable, not listable: a Secret mounted for another group
    try:
        if os.geteuid() == 0:  # root lists it all the same: refuse as the kernel would
            denied = OSError(errno.EACCES, os.strerror(errno.EACCES), str(directory))

            def listing(self: Path) -> Any:
                raise denied

            monkeypatch.setattr(Path, "iterdir", listing)
        with pytest.raises(ConfigError) as caught:
            keys_from(directory)
    finally:
        directory.chmod(0o755)
    assert caught.value.problems == [
        f"auth.api_key_directory: cannot read {directory}: Permission denied"
    ]


def test_a_directory_path_the_system_refuses_is_a_config_error(tmp_path: Path) -> None:
    too_long = tmp_path / ("k" * 300)  # longer than any file name may be
    with pytest.raises(ConfigError) as caught:
        keys_from(too_long)
    assert caught.value.problems == [
        f"auth.api_key_directory: cannot read {too_long}: File name too long"
    ]


@pytest.mark.parametrize("kind", ["a file", "missing"])
def test_a_directory_that_is_a_file_or_missing_says_so(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "keys"
    if kind == "a file":
        path.write_text("not-a-directory")
    with pytest.raises(ConfigError) as caught:
        keys_from(path)
    assert caught.value.problems == [f"auth.api_key_directory: {path} is not a directory"]


def test_check_config_exits_2_for_an_unreadable_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    write_config(config, tmp_path / ("k" * 300))
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"invalid config {config}:" in err and "File name too long" in err
    assert "Traceback" not in err


# --- Many requests at once with one key not yet cached ------------------------------------

PREFIX = "edge:"
SECRET = "aigw-created-at-run-time"
DIGEST = key_digest(SECRET)


class SlowStore:
    """A store that has run each HGETALL but answers only when the test releases it."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, str]] = {
            f"{PREFIX}key:{{{DIGEST.hex()}}}": {"id": "ci-bot", "user_id": "carol"}
        }
        self.reads = 0
        self.cancelled_reads = 0
        self.failures = 0
        self.answer = asyncio.Event()

    def register_script(self, source: str) -> object:
        return object()

    async def hgetall(self, name: str) -> dict[str, str]:
        self.reads += 1
        found = dict(self.records.get(name, {}))  # read now: a later delete does not change it
        try:
            await self.answer.wait()
        except asyncio.CancelledError:
            self.cancelled_reads += 1
            raise
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the store went away")
        return found


async def settle() -> None:
    """Let every task started so far run up to where it waits on the store."""
    for _ in range(20):
        await asyncio.sleep(0)


def lookups(keys: StoredKeys, count: int) -> list[asyncio.Task[ApiKey | None]]:
    return [asyncio.create_task(keys.lookup(DIGEST)) for _ in range(count)]


async def test_requests_at_once_with_an_uncached_key_cost_one_store_read() -> None:
    store = SlowStore()
    keys = StoredKeys(store, PREFIX)
    waiting = lookups(keys, 20)
    await settle()
    store.answer.set()
    found = await asyncio.gather(*waiting)
    assert {key.id if key else None for key in found} == {"ci-bot"}
    assert store.reads == 1
    cached = keys.cached(DIGEST)
    assert isinstance(cached, ApiKey) and cached.id == "ci-bot"


async def test_the_first_request_giving_up_leaves_the_others_their_answer() -> None:
    store = SlowStore()
    keys = StoredKeys(store, PREFIX)
    first, *others = lookups(keys, 3)
    await settle()
    first.cancel()  # its deadline passed, or its client hung up
    await settle()
    store.answer.set()
    found = await asyncio.gather(*others)
    assert [key.id if key else None for key in found] == ["ci-bot", "ci-bot"]
    assert first.cancelled()
    assert (store.reads, store.cancelled_reads) == (1, 0)


async def test_a_failed_read_fails_those_waiting_and_the_next_lookup_reads_again() -> None:
    store = SlowStore()
    store.failures = 1
    keys = StoredKeys(store, PREFIX)
    waiting = lookups(keys, 5)
    await settle()
    store.answer.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    assert store.reads == 1
    found = await keys.lookup(DIGEST)  # the failure was not kept
    assert found is not None and found.id == "ci-bot"
    assert store.reads == 2


async def test_when_every_request_gives_up_the_read_stops_and_the_next_starts_afresh() -> None:
    store = SlowStore()
    keys = StoredKeys(store, PREFIX)
    waiting = lookups(keys, 2)
    await settle()
    for task in waiting:
        task.cancel()
    await settle()
    assert (store.reads, store.cancelled_reads) == (1, 1)
    store.answer.set()
    found = await keys.lookup(DIGEST)
    assert found is not None and found.id == "ci-bot"
    assert store.reads == 2


async def test_a_lookup_after_a_revocation_does_not_share_a_read_begun_before_it() -> None:
    store = SlowStore()
    keys = StoredKeys(store, PREFIX)
    (before,) = lookups(keys, 1)
    await settle()  # its HGETALL found the key; the answer is on its way
    store.records.clear()  # revoked meanwhile, and this process heard of it
    keys.cache.forget(DIGEST)
    (after,) = lookups(keys, 1)
    await settle()
    store.answer.set()
    assert (await before) is not None
    assert (await after) is None
    assert store.reads == 2
    assert keys.cached(DIGEST) is None  # what the later read found, not the earlier

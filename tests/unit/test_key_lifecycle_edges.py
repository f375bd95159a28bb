"""API keys at the edges of their life: loaded from a Secret directory, looked up at once.

An operator mounts keys as a directory. Two files holding one secret are two identities
for one credential: the gateway refuses the config and names both files (never the
secret), at start, in ``check-config`` and on reload. A directory the gateway cannot
read is a config error like any other, not a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from extproc.auth.api_keys import ApiKeyStore
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

"""Bedrock credentials from the shared AWS files: a rotation is used without a restart.

Credential rotation tools (and operators) rewrite ``~/.aws/credentials`` in place, often with
short-lived session credentials. botocore reads the file once and its keys never refresh
themselves, so the config reloader watches the file: a rewrite reloads the config, whose new
signer reads the chain again. Signatures are checked with the mock's SigV4 verifier, as
the mock provider (and AWS) check them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from extproc.config import ConfigError, parse_config
from extproc.config.model import AwsConfig
from extproc.config.watched_files import secret_files
from extproc.devstack import DEFAULT_CONFIG
from extproc.mock_llm.bedrock_api import AwsError, SigV4Verifier
from extproc.providers.aws_signer import AwsSigner
from extproc.translators.openai_bedrock import request_path

ENDPOINT = "https://bedrock-runtime.us-east-1.amazonaws.com"
HOST = "bedrock-runtime.us-east-1.amazonaws.com"
PATH = request_path("amazon.titan-text-express-v1", stream=False)
BODY = b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'


@pytest.fixture
def shared_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The shared credentials file of profile ``gateway``; nothing else of the machine's AWS."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "config"
    config.write_text("")
    credentials = tmp_path / "credentials"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "gateway")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return credentials


def write_profile(
    path: Path, key_id: str | None, secret: str | None, token: str | None = None
) -> None:
    """Write profile ``gateway``; a key left None is not written."""
    values = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
    values["aws_session_token"] = token
    lines = ["[gateway]", *(f"{name} = {value}" for name, value in values.items() if value)]
    path.write_text("\n".join(lines) + "\n")


def accepted_by(verifier: SigV4Verifier, headers: dict[str, str]) -> bool:
    received = CIMultiDict({"host": HOST, "content-type": "application/json", **headers})
    try:
        verifier.verify(
            method="POST",
            target=PATH,
            scheme="https",
            headers=CIMultiDictProxy(received),
            body=BODY,
        )
    except AwsError:
        return False
    return True


async def started_from_the_chain() -> AwsSigner:
    signer = AwsSigner(AwsConfig(region="us-east-1"), ENDPOINT)
    await signer.start()
    return signer


def test_the_reloader_watches_the_shared_files_a_bedrock_provider_signs_with(
    shared_credentials: Path,
) -> None:
    """A rewrite of either file reloads the config, and with it a new signer that reads
    the chain again (the reloader polls every watched file each second)."""
    text = DEFAULT_CONFIG.read_text()
    watched = secret_files(parse_config(text, "gateway.yaml", {"MOCK_LLM_ADDRESS": "m:1"}))
    assert shared_credentials in watched
    assert shared_credentials.parent / "config" in watched


def test_a_gateway_without_bedrock_watches_no_aws_file(shared_credentials: Path) -> None:
    text = DEFAULT_CONFIG.read_text()
    config = parse_config(text, "gateway.yaml", {"MOCK_LLM_ADDRESS": "m:1"})
    without = config.model_copy(
        update={"providers": tuple(p for p in config.providers if p.aws is None)}
    )
    assert shared_credentials not in secret_files(without)


async def test_a_signer_started_after_the_rewrite_signs_with_the_new_keys(
    shared_credentials: Path,
) -> None:
    write_profile(shared_credentials, "AKIDOLD", "old-secret", "old-token")
    old = await started_from_the_chain()
    new_keys = SigV4Verifier(
        access_key_id="AKIDNEW",
        secret_access_key="new-secret",
        region="us-east-1",
        session_token="new-token",
    )
    assert not accepted_by(new_keys, old.sign("POST", PATH, BODY, {}))

    # The operator (or a rotation tool) writes the new keys; the reload starts a new signer.
    write_profile(shared_credentials, "AKIDNEW", "new-secret", "new-token")
    headers = (await started_from_the_chain()).sign("POST", PATH, BODY, {})
    assert accepted_by(new_keys, headers)
    assert headers["x-amz-security-token"] == "new-token"


async def test_a_credentials_file_left_without_keys_is_refused_and_names_no_key(
    shared_credentials: Path,
) -> None:
    """Half-written by a rotation tool: the reload is refused (the running config, and
    its signer, keep serving) and tried again when the file changes again."""
    write_profile(shared_credentials, key_id="AKIDHALF", secret=None)
    with pytest.raises(ConfigError) as caught:
        await started_from_the_chain()
    assert "PartialCredentialsError" in str(caught.value)
    assert "AKIDHALF" not in str(caught.value)

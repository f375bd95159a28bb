"""The SigV4 signer for Bedrock: signatures AWS accepts, and where their credentials come from.

Every test runs offline: the AWS environment is emptied, instance metadata is disabled and
sockets refuse to connect, so a credential chain that tried to reach STS or IMDS would fail.
"""

from __future__ import annotations

import datetime
import hmac
import os
import socket
import threading
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import Any

import botocore.auth
import botocore.session
import pytest
from botocore.credentials import Credentials, RefreshableCredentials

from extproc.config.loader import ConfigError
from extproc.config.model import AwsConfig
from extproc.providers import aws_signer
from extproc.providers.aws_signer import AwsSigner, default_chain_credentials

ENDPOINT = "https://bedrock-runtime.us-east-1.amazonaws.com"
HOST = "bedrock-runtime.us-east-1.amazonaws.com"
PATH = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
# AWS encodes the path once more for the canonical request of every service but S3.
CANONICAL_PATH = "/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse"
BODY = b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'
NOW = datetime.datetime(2026, 12, 1, 12, 0, 0)
AMZ_DATE = "20261201T120000Z"
SCOPE = "20261201/us-east-1/bedrock/aws4_request"


@pytest.fixture(autouse=True)
def offline_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS settings from the machine running the tests, and no network to reach AWS."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        empty = tmp_path / name.lower()
        empty.write_text("")
        monkeypatch.setenv(name, str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def refuse(*_: Any, **__: Any) -> None:
        raise OSError("tests must not reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *_, **__: NOW)


def aws(**fields: Any) -> AwsConfig:
    return AwsConfig.model_validate({"region": "us-east-1", **fields})


STATIC = {"access_key_id": "AKID", "secret_access_key": "wJalrXUtnFEMI/K7MDENG"}


async def started(config: AwsConfig, endpoint: str = ENDPOINT) -> AwsSigner:
    signer = AwsSigner(config, endpoint)
    await signer.start()
    return signer


def independent_sigv4(secret: str, access_key: str, signed: dict[str, str]) -> str:
    """SigV4 computed here from its specification, not by botocore."""
    names = sorted(signed)
    canonical = "\n".join(
        [
            "POST",
            CANONICAL_PATH,
            "",
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            sha256(BODY).hexdigest(),
        ]
    )
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", AMZ_DATE, SCOPE, sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret}".encode()
    for part in SCOPE.split("/"):
        key = hmac.new(key, part.encode(), sha256).digest()
    signature = hmac.new(key, to_sign.encode(), sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{SCOPE}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )


# --- signatures ----------------------------------------------------------------------------


async def test_the_signature_is_sigv4_over_host_content_type_and_date() -> None:
    signer = await started(aws(**STATIC))
    headers = signer.sign("POST", PATH, BODY, {"content-type": "application/json"})
    assert set(headers) == {"authorization", "x-amz-date"}
    assert headers["x-amz-date"] == AMZ_DATE
    assert f"Credential=AKID/{SCOPE}," in headers["authorization"]
    assert "SignedHeaders=content-type;host;x-amz-date," in headers["authorization"]
    expected = independent_sigv4(
        STATIC["secret_access_key"],
        "AKID",
        {"content-type": "application/json", "host": HOST, "x-amz-date": AMZ_DATE},
    )
    assert headers["authorization"] == expected


async def test_the_signature_is_what_botocores_own_bedrock_client_sends() -> None:
    sdk = botocore.session.get_session().create_client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="AKID",
        aws_secret_access_key=STATIC["secret_access_key"],
    )
    sent: list[Any] = []

    class StoppedError(Exception):
        pass

    def capture(request: Any, **_: Any) -> None:
        sent.append(request)
        raise StoppedError

    sdk.meta.events.register("before-send", capture)
    with pytest.raises(StoppedError):
        sdk.converse(
            modelId="anthropic.claude-3-haiku-20240307-v1:0",
            messages=[{"role": "user", "content": [{"text": "hi"}]}],
        )
    sdk.close()
    request = sent[0]
    signer = await started(aws(**STATIC))
    ours = signer.sign("POST", PATH, request.body, {})
    assert request.url == ENDPOINT + PATH
    assert ours["authorization"] == request.headers["Authorization"].decode()


async def test_a_different_secret_gives_a_different_signature() -> None:
    first = (await started(aws(**STATIC))).sign("POST", PATH, BODY, {})
    other = {**STATIC, "secret_access_key": "another-secret"}
    second = (await started(aws(**other))).sign("POST", PATH, BODY, {})
    assert first["x-amz-date"] == second["x-amz-date"]
    assert first["authorization"] != second["authorization"]


async def test_a_session_token_is_sent_and_signed() -> None:
    signer = await started(aws(**STATIC, session_token="FQoGZXIvYXdzEJr"))
    headers = signer.sign("POST", PATH, BODY, {})
    assert headers["x-amz-security-token"] == "FQoGZXIvYXdzEJr"
    assert (
        "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,"
        in (headers["authorization"])
    )
    signed = {
        "content-type": "application/json",
        "host": HOST,
        "x-amz-date": AMZ_DATE,
        "x-amz-security-token": "FQoGZXIvYXdzEJr",
    }
    assert headers["authorization"] == independent_sigv4(
        STATIC["secret_access_key"], "AKID", signed
    )


async def test_only_x_amz_headers_of_the_caller_are_signed() -> None:
    signer = await started(aws(**STATIC))
    headers = signer.sign(
        "POST",
        PATH,
        BODY,
        {"X-Amzn-Bedrock-Trace": "ENABLED", "x-request-id": "r1", "content-type": "text/plain"},
    )
    assert "SignedHeaders=content-type;host;x-amz-date," in headers["authorization"]
    headers = signer.sign("POST", PATH, BODY, {"X-Amz-Target": "t"})
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-target," in headers["authorization"]


@pytest.mark.parametrize(
    ("endpoint", "host"),
    [
        ("http://127.0.0.1:8089", "127.0.0.1:8089"),
        (f"https://{HOST}:443", f"{HOST}:443"),  # as Envoy sends it (host_rewrite_literal)
        ("http://[::1]:9000/ignored/prefix", "[::1]:9000"),
    ],
)
async def test_host_is_the_endpoints_authority_as_written(endpoint: str, host: str) -> None:
    signer = await started(aws(**STATIC), endpoint)
    assert signer.host == host


async def test_signing_before_start_or_after_close_is_a_bug() -> None:
    signer = AwsSigner(aws(**STATIC), ENDPOINT)
    with pytest.raises(RuntimeError):
        signer.sign("POST", PATH, BODY, {})
    await signer.start()
    await signer.close()
    with pytest.raises(RuntimeError):
        signer.sign("POST", PATH, BODY, {})


# --- static credentials --------------------------------------------------------------------


async def test_credentials_are_read_from_files_and_stripped(tmp_path: Path) -> None:
    files = {}
    for field, value in {**STATIC, "session_token": "TOKEN"}.items():
        path = tmp_path / field
        path.write_text(f"  {value}\n\n")
        files[f"{field}_file"] = str(path)
    from_files = (await started(aws(**files))).sign("POST", PATH, BODY, {})
    inline = (await started(aws(**STATIC, session_token="TOKEN"))).sign("POST", PATH, BODY, {})
    assert from_files == inline


async def test_a_missing_file_names_the_field_and_nothing_secret(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("AKID-IN-A-FILE")
    config = aws(access_key_id_file=str(key_file), secret_access_key_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as failed:
        await AwsSigner(config, ENDPOINT).start()
    assert failed.value.source == "aws"
    assert "secret_access_key_file" in str(failed.value)
    assert "AKID-IN-A-FILE" not in str(failed.value)


async def test_an_empty_credential_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    config = aws(access_key_id="AKID", secret_access_key_file=str(empty))
    with pytest.raises(ConfigError, match="secret_access_key_file: is empty"):
        await AwsSigner(config, ENDPOINT).start()


# --- the default chain ---------------------------------------------------------------------


async def test_the_default_chain_reads_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    signer = await started(aws())
    assert signer.method == "env"
    assert (
        f"Credential=AKIDFROMENV/{SCOPE}," in signer.sign("POST", PATH, BODY, {})["authorization"]
    )


async def test_no_credentials_anywhere_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no credentials"):
        await AwsSigner(aws(), ENDPOINT).start()


def test_a_web_identity_token_selects_assume_role_with_web_identity(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What a Kubernetes service account (IRSA) puts in the pod's environment.
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.sig")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/gateway")
    credentials = default_chain_credentials("us-east-1")
    # Chosen, not fetched: STS is called on first use, which sockets here would refuse.
    assert isinstance(credentials, RefreshableCredentials)
    assert credentials.method == "assume-role-with-web-identity"


async def test_the_chain_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[threading.Thread] = []

    def chain(region: str) -> Credentials:
        threads.append(threading.current_thread())
        return Credentials("AKIDCHAIN", "secret", method="env")

    monkeypatch.setattr(aws_signer, "default_chain_credentials", chain)
    await started(aws())
    assert threads and threads[0] is not threading.main_thread()


# --- refreshing temporary credentials ------------------------------------------------------


def temporary(
    access_key: str, expires_in: datetime.timedelta, refresh: Callable[[], dict[str, str]]
) -> RefreshableCredentials:
    expiry = datetime.datetime.now(datetime.UTC) + expires_in
    return RefreshableCredentials.create_from_metadata(
        metadata={
            "access_key": access_key,
            "secret_key": "secret",
            "token": "session",
            "expiry_time": expiry.isoformat(),
        },
        refresh_using=refresh,
        method="assume-role-with-web-identity",
    )


def renewed() -> dict[str, str]:
    expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    return {
        "access_key": "AKIDRENEWED",
        "secret_key": "secret2",
        "token": "session2",
        "expiry_time": expiry.isoformat(),
    }


async def test_credentials_near_expiry_are_refreshed_in_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[threading.Thread] = []

    def refresh() -> dict[str, str]:
        threads.append(threading.current_thread())
        return renewed()

    expiring = temporary("AKIDOLD", datetime.timedelta(minutes=30), refresh)
    monkeypatch.setattr(aws_signer, "default_chain_credentials", lambda region: expiring)
    signer = await started(aws())
    await signer.refresh_if_needed()
    assert threads == []  # 30 minutes left: nothing to do yet
    # Five minutes left: inside botocore's mandatory refresh window.
    expiring._expiry_time = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    await signer.refresh_if_needed()
    assert threads and threads[0] is not threading.main_thread()
    headers = signer.sign("POST", PATH, BODY, {})
    assert "Credential=AKIDRENEWED/" in headers["authorization"]
    assert headers["x-amz-security-token"] == "session2"


def unreachable_sts() -> dict[str, str]:
    raise OSError("STS is unreachable")


async def test_a_failed_refresh_keeps_the_current_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expiring = temporary("AKIDOLD", datetime.timedelta(minutes=30), unreachable_sts)
    monkeypatch.setattr(aws_signer, "default_chain_credentials", lambda region: expiring)
    signer = await started(aws())
    expiring._expiry_time = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    with pytest.raises(OSError, match="STS"):
        await signer.refresh_if_needed()
    assert "Credential=AKIDOLD/" in signer.sign("POST", PATH, BODY, {})["authorization"]


async def test_credentials_the_chain_cannot_fetch_fail_start_without_details(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expired = temporary("AKIDOLD", datetime.timedelta(minutes=-1), unreachable_sts)
    monkeypatch.setattr(aws_signer, "default_chain_credentials", lambda region: expired)
    with pytest.raises(ConfigError) as failed:
        await AwsSigner(aws(), ENDPOINT).start()
    assert "(assume-role-with-web-identity): OSError" in str(failed.value)
    assert "unreachable" not in str(failed.value)

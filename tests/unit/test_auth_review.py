"""A fresh-eyes review of authentication: what a client or an attacker could notice.

JWTs use the keys, tokens and JWKS server of test_jwt_verifier; API keys and the
authentication stage go through ``extproc.testing``'s gateway, as a request would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.auth.api_keys import ApiKeyStore
from extproc.config import parse_config
from extproc.config.auth_model import AuthConfig
from extproc.config.loader import ConfigError
from extproc.devstack import DEFAULT_CONFIG
from tests.unit import test_jwt_verifier as jwt_tests
from tests.unit.test_jwt_verifier import (
    RSA_KEY_NEXT,
    Factory,
    FakeClock,
    JwksServer,
    jwk,
    mint,
    refusal,
    url_provider,
)

clock = jwt_tests.clock
jwks_server = jwt_tests.jwks_server
make_verifier = jwt_tests.make_verifier


async def test_a_cached_token_stops_working_when_its_kid_names_another_key(
    jwks_server: JwksServer, make_verifier: Factory
) -> None:
    # Some identity providers keep one kid ("1", "default") and replace the key behind
    # it: a compromised key withdrawn that way must stop its tokens as a removed kid does.
    provider = url_provider(
        jwks_server, jwks={"refresh_interval_s": 0.02, "min_refresh_interval_s": 600}
    )
    verifier = await make_verifier(provider)
    token = mint()
    assert (await verifier.verify(token)).user_id == "alice"
    assert verifier.cached(token) is not None
    jwks_server.keys = [jwk(RSA_KEY_NEXT, "rsa-1", "RS256")]
    await jwks_server.wait_for_hits(jwks_server.hits + 2)
    assert verifier.cached(token) is None
    assert await refusal(verifier, token) == "invalid token: bad signature"
    replacement = mint(RSA_KEY_NEXT)
    assert (await verifier.verify(replacement)).user_id == "alice"
    assert verifier.cached(replacement) is not None


async def test_a_key_replaced_under_the_same_kid_verifies_without_waiting_for_the_refresh(
    jwks_server: JwksServer, make_verifier: Factory, clock: FakeClock
) -> None:
    # Rotation that keeps the kid: the new key's tokens fail the old key's signature
    # check. They are worth one refetch (rate limited as for an unknown kid), not a 401
    # for every client until the background refresh, minutes later.
    verifier = await make_verifier(url_provider(jwks_server))
    jwks_server.keys = [jwk(RSA_KEY_NEXT, "rsa-1", "RS256")]
    clock.advance(11)  # past min_refresh_interval_s since the start-up fetch
    assert (await verifier.verify(mint(RSA_KEY_NEXT))).user_id == "alice"
    assert jwks_server.hits == 2
    # A forged signature within the interval: refused without asking the IdP again.
    assert await refusal(verifier, mint()) == "invalid token: bad signature"
    assert jwks_server.hits == 2
    clock.advance(11)
    assert await refusal(verifier, mint()) == "invalid token: bad signature"
    assert jwks_server.hits == 3


def test_a_secret_file_whose_name_is_no_key_id_is_a_config_error_naming_it(
    tmp_path: Path,
) -> None:
    # Kubernetes allows Secret keys such as `_legacy` that are no valid key id: the
    # operator must be told which file, as for any other config problem, not get a
    # traceback from `extproc serve` or `extproc check`.
    (tmp_path / "team1").write_text("a-good-secret-1\n")
    (tmp_path / "_legacy").write_text("another-secret-2\n")
    with pytest.raises(ConfigError) as caught:
        ApiKeyStore(AuthConfig(api_key_directory=str(tmp_path)))
    message = str(caught.value)
    assert "auth.api_key_directory/_legacy" in message
    assert "another-secret-2" not in message


def config_with_jwks_url(url: str) -> str:
    provider = (
        "  jwt_providers:\n    - name: idp\n      issuer: https://idp.example.com\n"
        f"      jwks: {{url: '{url}'}}\n"
    )
    return DEFAULT_CONFIG.read_text().replace("\nauth:\n", "\nauth:\n" + provider, 1)


@pytest.mark.parametrize(
    "url", ["http://[::1/jwks.json", "https:///jwks.json", "https://idp.example.com:99999/jwks"]
)
def test_a_jwks_url_that_names_no_server_is_a_config_error(url: str) -> None:
    # Otherwise the gateway starts (or crashes with a traceback) and refuses every token
    # of the provider, with only a fetch warning to say why.
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with_jwks_url(url), "gateway.yaml", {})
    assert "jwks" in str(caught.value) and "url" in str(caught.value)


def test_a_jwks_url_with_a_port_and_an_ipv6_host_is_fine() -> None:
    for url in ("https://[::1]:8443/jwks.json", "http://keycloak:8080/realms/x/certs"):
        parse_config(config_with_jwks_url(url), "gateway.yaml", {})


def test_a_key_from_the_environment_works_without_its_trailing_newline() -> None:
    # An env var filled from a file (a Kubernetes Secret made with --from-file) ends in
    # a newline, which no header value can carry: the key would never match, as a
    # key_file or a directory key with the same content does.
    config = parse_config(
        DEFAULT_CONFIG.read_text(), "gateway.yaml", {"TEAM1_API_KEY": "t1-secret-from-a-file\n"}
    )
    store = ApiKeyStore(config.auth)
    found = store.lookup("t1-secret-from-a-file")
    assert found is not None and found.id == "team1"

"""Secrets in URLs the operator writes: a store password that is not percent-encoded.

Generated passwords hold '/', '+' and '=' (base64), and '#' or '?' now and then. Put
raw into a URL (``redis://:${REDIS_PASSWORD}@host:6379``), such a character ends the
URL's authority early: what precedes it is read as a host and a port. The port is then
part of the password, and "cannot be cast to an integer" errors quote it. Neither a
config error nor the store's refusal to open may name any part of the password.
"""

from __future__ import annotations

import pytest

from extproc.auth.jwks import shown_url
from extproc.config import ConfigError, parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.store.connection import connect

# Four characters at each end found nowhere else: a fragment is as easy to find as the whole.
PASSWORD_HEAD = "Ab3Q"
PASSWORD_TAIL = "Xy9Z"
# The characters that end a URL's authority, each between the password's two ends.
SPLITTERS = ("/", "#", "?")
STORE_SCHEMES = (
    "redis://:{pw}@127.0.0.1:6379/0",
    "rediss://default:{pw}@store.internal:6380",
    "redis+cluster://:{pw}@127.0.0.1:7000",
    "redis+sentinel://:{pw}@sentinel-a:26379,sentinel-b:26379/mymaster",
)


def password(splitter: str) -> str:
    return f"{PASSWORD_HEAD}{splitter}mid{PASSWORD_TAIL}"


def shows_no_part_of_the_password(text: str) -> bool:
    return PASSWORD_HEAD not in text and PASSWORD_TAIL not in text and "mid" not in text


def config_with_store_url(url: str) -> str:
    text = DEFAULT_CONFIG.read_text()
    assert "  url: ${REDIS_URL:-}\n" in text, "the default config's store section has changed"
    return text.replace("  url: ${REDIS_URL:-}\n", "  url: ${REDIS_URL}\n", 1)


ENV = {
    "MOCK_LLM_API_KEY": "mock-provider-key-0001",
    "TEAM1_API_KEY": "team1-key-000000001",
    "TEAM2_API_KEY": "team2-key-000000002",
    "AIGW_ADMIN_TOKEN": "admin-token-00000001",
}


@pytest.mark.parametrize("splitter", SPLITTERS)
@pytest.mark.parametrize("scheme", ["http", "valkey", "redis-cluster"])
def test_a_store_url_of_a_wrong_scheme_is_refused_without_its_raw_password(
    scheme: str, splitter: str
) -> None:
    """``valkey://`` is an easy mistake; the refusal echoes the URL, its user and
    password masked, even where the password's '/' or '#' ended the authority early."""
    url = f"{scheme}://:{password(splitter)}@store.internal:6379"
    with pytest.raises(ConfigError) as refused:
        parse_config(config_with_store_url(url), "gateway.yaml", {**ENV, "REDIS_URL": url})
    shown = str(refused.value)
    assert "store.url: scheme must be" in shown
    assert f"{scheme}://***@" in shown  # still says what was written, up to the host
    assert shows_no_part_of_the_password(shown), shown


@pytest.mark.parametrize("splitter", SPLITTERS)
@pytest.mark.parametrize("template", STORE_SCHEMES)
def test_a_store_password_that_ends_the_urls_authority_is_a_config_error_naming_none_of_it(
    template: str, splitter: str
) -> None:
    url = template.format(pw=password(splitter))
    with pytest.raises(ConfigError) as refused:
        connect(url, 0.5)
    shown = str(refused.value)
    assert "store.url" in shown
    assert "percent-encode" in shown  # and how to write it instead
    assert shows_no_part_of_the_password(shown), shown
    # Nothing chained to it either: a traceback would print the cause's words.
    error = refused.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@pytest.mark.parametrize("template", STORE_SCHEMES)
def test_the_same_password_percent_encoded_is_accepted(template: str) -> None:
    """The way out the error names works: ``%2F`` for '/', and so on."""
    for splitter, encoded in zip(SPLITTERS, ("%2F", "%23", "%3F"), strict=True):
        connect(template.format(pw=password(splitter).replace(splitter, encoded)), 0.5)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:{pw}@127.0.0.1:63x9",
        "redis+sentinel://:{pw}@sentinel-a:2637x/mymaster",
    ],
)
def test_a_port_that_is_no_number_is_named_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        connect(url.format(pw=password("")), 0.5)
    shown = str(refused.value)
    assert "store.url" in shown and "port" in shown
    assert shows_no_part_of_the_password(shown), shown


@pytest.mark.parametrize("splitter", SPLITTERS)
def test_check_config_refuses_a_raw_password_in_the_store_url_too(splitter: str) -> None:
    """What serve refuses at start, check-config refuses first (it said "ok")."""
    url = f"redis://:{password(splitter)}@127.0.0.1:6379/0"
    with pytest.raises(ConfigError) as refused:
        parse_config(config_with_store_url(url), "gateway.yaml", {**ENV, "REDIS_URL": url})
    shown = str(refused.value)
    assert "store.url" in shown and "percent-encode" in shown
    assert shows_no_part_of_the_password(shown), shown


@pytest.mark.parametrize("splitter", SPLITTERS)
def test_a_jwks_url_is_named_in_warnings_without_any_part_of_its_password(
    splitter: str,
) -> None:
    """A JWKS URL with a raw '/' after a digit-led password passes config validation; each
    fetch warning names the URL, and named all of the password."""
    url = f"https://reader:123{password(splitter)}@idp.example:8443/keys/jwks.json?v=2"
    shown = shown_url(url)
    assert shown == "https://idp.example:8443/keys/jwks.json"
    assert shows_no_part_of_the_password(shown), shown

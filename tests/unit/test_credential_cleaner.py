"""One cleaner for text that quotes what a client sent: what each reader may see of it.

The client gets its error without the key or token it presented, but with a pasted
token it sent itself; whoever reads the gateway's log sees neither, nor a fragment of
a random key. These pin the two readers of ``credential_cleaner.cleaned``; the places
that call it are tested through the processor (``test_echoed_credential``,
``test_logged_error_credentials``, ``test_model_credentials``).
"""

from __future__ import annotations

import pytest

from extproc.credential_cleaner import cleaned, holds_credential

# The request's own org key: random, of no well-known shape (only knowing it finds it).
OWN = "org-7Hq2Lm9Xv4Tz8Kp3Wn6Rb1Yc5Fd0Gs"
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2


def test_the_client_gets_its_key_hidden_and_the_token_it_pasted_back() -> None:
    text = f"messages with role '{OWN}' or '{GITHUB}' cannot be sent to this model"
    assert cleaned(text, OWN, shapes_shown=True) == (
        f"messages with role '[redacted]' or '{GITHUB}' cannot be sent to this model"
    )


def test_the_log_shows_neither_the_key_nor_any_token() -> None:
    text = f"role '{OWN}' or '{GITHUB}', or the key's end '{OWN[-6:]}'"
    assert cleaned(text, OWN, shapes_shown=False) == (
        "role '[redacted]' or '[redacted]', or the key's end '[redacted]'"
    )


@pytest.mark.parametrize("shapes_shown", [True, False], ids=["client", "log"])
def test_a_credential_found_around_the_key_goes_whole(shapes_shown: bool) -> None:
    # A path's segment that holds the key: hiding the key first left the segment's ends.
    segment = f"x{OWN}y"
    text = f"GET is not allowed on /openai/{segment}"
    said = cleaned(text, OWN, shapes_shown=shapes_shown, also=[segment])
    assert said == "GET is not allowed on /openai/[redacted]"


@pytest.mark.parametrize("shapes_shown", [True, False], ids=["client", "log"])
def test_a_text_without_a_credential_is_left_as_it_is(shapes_shown: bool) -> None:
    text = "messages with role 'narrator' cannot be sent to this model"
    assert cleaned(text, OWN, shapes_shown=shapes_shown) == text
    assert cleaned(text, None, shapes_shown=shapes_shown) == text


def test_a_credential_too_short_to_tell_from_a_word_is_not_looked_for() -> None:
    text = "messages with role 'user1' cannot be sent"
    assert cleaned(text, "user1", shapes_shown=True, also=["role"]) == text


@pytest.mark.parametrize(
    ("value", "held"),
    [(f"run_{OWN}", True), (GITHUB, True), (f"x-{GITHUB}", True), ("create_issue_2024", False)],
)
def test_a_name_holds_a_credential_when_it_holds_the_key_or_a_token(value: str, held: bool) -> None:
    assert holds_credential(value, OWN) is held

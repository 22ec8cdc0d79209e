"""``SIPCTL_ADMIN_TOKEN`` is checked for strength at start-up, not only for length: one line naming the variable
and how to make a good one."""

from __future__ import annotations

import random
import secrets

import pytest

from sip_controller.config import ConfigError, Secrets, admin_token_problem

WEAK = [
    "aaaaaaaaaaaaaaaa",  # one character
    "abcdefghijklmnopqrstuvwxyz",  # one class of character
    "1234567890123456",
    "ABCDEFGHIJKLMNOPQ",
    "a1a1a1a1a1a1a1a1a1a1",  # two characters repeated
    "abababab12121212",  # low entropy
    "abcdefgh12345678",  # runs of neighbours
    "0123456789abcdef",
    "Password12345678!",  # a placeholder word
    "changeme-changeme-42",
    "my-secret-token-2024",
]


@pytest.mark.parametrize("token", WEAK)
def test_a_weak_admin_token_is_refused_naming_the_variable_and_the_fix(token: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Secrets.from_env({"SIPCTL_ADMIN_TOKEN": token})
    (problem,) = caught.value.problems
    assert problem.startswith("SIPCTL_ADMIN_TOKEN: ")
    assert "openssl rand -hex 32" in problem
    assert token not in problem  # a secret, even a bad one, is never echoed


def test_a_short_token_is_still_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        Secrets.from_env({"SIPCTL_ADMIN_TOKEN": "xK9#mQ2$"})
    assert caught.value.problems[0].startswith("SIPCTL_ADMIN_TOKEN: too weak (shorter than 16 characters)")


HEX = "0123456789abcdef"
URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _random_tokens(alphabet: str, length: int, count: int) -> list[str]:
    rng = random.Random(f"{alphabet}:{length}")  # seeded: the same tokens every run
    return ["".join(rng.choice(alphabet) for _ in range(length)) for _ in range(count)]


@pytest.mark.parametrize(
    ("alphabet", "length"),
    [(HEX, 64), (HEX, 48), (URLSAFE, 43), (URLSAFE, 22)],  # openssl rand -hex 32 / 24, token_urlsafe(32) / (16)
)
def test_tokens_made_as_the_message_says_pass(alphabet: str, length: int) -> None:
    for token in _random_tokens(alphabet, length, 2000):
        secrets_ = Secrets.from_env({"SIPCTL_ADMIN_TOKEN": token})
        assert secrets_.admin_token is not None
        assert secrets_.admin_token.get_secret_value() == token


def test_random_tokens_of_the_minimum_length_are_almost_never_refused() -> None:
    tokens = _random_tokens(HEX, 16, 5000)  # openssl rand -hex 8
    refused = [t for t in tokens if admin_token_problem(t) is not None]
    assert len(refused) < 0.003 * len(tokens)
    # the ones refused are refused for what they are (all digits, say), not at random
    assert all(admin_token_problem(t) in ("one kind of character only", "too few different characters",
                                          "mostly runs of neighbouring characters, like abcd or 1234") for t in refused)
    assert admin_token_problem(secrets.token_hex(32)) is None


def test_no_token_leaves_the_console_off() -> None:
    assert Secrets.from_env({}).admin_token is None

"""Bearer tokens: minting, checking, and the secret kept in OPSKIT_HOME."""

import stat
import time

import jwt
import pytest

from opskit.app import auth
from opskit.core.errors import BadInput
from opskit.core.settings import Settings

SECRET = "a-unit-test-secret-that-is-long-enough-for-hs256-and-for-the-hs512-case"


def test_a_minted_token_names_its_user():
    token = auth.mint_token(SECRET, 42, 60)
    assert auth.user_id_from_token(SECRET, token) == 42
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "42" and claims["exp"] - claims["iat"] == 60


@pytest.mark.parametrize(
    "token, reason",
    [
        (jwt.encode({"sub": "1", "exp": int(time.time()) - 5}, SECRET), "expired"),
        (
            jwt.encode(
                {"sub": "1", "exp": int(time.time()) + 3600}, "another-secret-of-32-bytes-or-more"
            ),
            "invalid",
        ),
        (jwt.encode({"sub": "1"}, SECRET), "invalid"),  # no exp
        (jwt.encode({"exp": int(time.time()) + 3600}, SECRET), "invalid"),  # no sub
        (jwt.encode({"sub": "abc", "exp": int(time.time()) + 3600}, SECRET), "invalid"),
        (jwt.encode({"sub": "0", "exp": int(time.time()) + 3600}, SECRET), "invalid"),
        (
            jwt.encode({"sub": "99999999999999999999", "exp": int(time.time()) + 3600}, SECRET),
            "invalid",
        ),
        (
            jwt.encode({"sub": "1", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS512"),
            "invalid",
        ),
        (
            jwt.encode({"sub": "1", "exp": int(time.time()) + 3600}, None, algorithm="none"),
            "invalid",
        ),
        ("garbage", "invalid"),
        ("", "invalid"),
    ],
)
def test_bad_tokens_are_refused(token, reason):
    with pytest.raises(auth.InvalidToken, match=reason):
        auth.user_id_from_token(SECRET, token)


def test_a_tampered_token_is_refused():
    header, payload, signature = auth.mint_token(SECRET, 1, 60).split(".")
    forged = jwt.encode({"sub": "2", "exp": int(time.time()) + 3600}, SECRET).split(".")[1]
    with pytest.raises(auth.InvalidToken):
        auth.user_id_from_token(SECRET, f"{header}.{forged}.{signature}")


@pytest.mark.parametrize("user_id, ttl", [(0, 60), (-1, 60), (2**63, 60), (1, 0), (1, -5)])
def test_minting_refuses_bad_input(user_id, ttl):
    with pytest.raises(BadInput):
        auth.mint_token(SECRET, user_id, ttl)


def test_the_secret_is_generated_once_into_opskit_home_with_mode_0600(tmp_path):
    settings = Settings.from_env({"OPSKIT_HOME": str(tmp_path / "home")})
    first = auth.jwt_secret(settings)
    assert len(first) >= 32
    assert auth.jwt_secret(settings) == first
    path = tmp_path / "home" / auth.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_opskit_jwt_secret_wins(tmp_path):
    settings = Settings.from_env({"OPSKIT_HOME": str(tmp_path), "OPSKIT_JWT_SECRET": "from-env"})
    assert auth.jwt_secret(settings) == "from-env"
    assert not (tmp_path / auth.SECRET_FILE).exists()

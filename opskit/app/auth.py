"""API bearer tokens: HS256 JWTs whose `sub` is the user id (docs/interface.md §9).

The secret is OPSKIT_JWT_SECRET, else a random one generated once into OPSKIT_HOME/jwt_secret
(mode 0600) and read back by every later process, so `opskit token` and `opskit serve` agree
without configuration.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from pathlib import Path

import jwt

from opskit.core.errors import BadInput, EnvironmentProblem
from opskit.core.settings import Settings

ALGORITHM = "HS256"
SECRET_FILE = "jwt_secret"
MAX_USER_ID = 2**63 - 1  # ids are bigint
MAX_TTL_S = 10 * 365 * 24 * 3600
TOKEN_CACHE_SIZE = 10_000


class InvalidToken(Exception):
    """The bearer token is missing, malformed, tampered with, expired or names no user id."""


def jwt_secret(settings: Settings) -> str:
    """OPSKIT_JWT_SECRET, else the secret kept in OPSKIT_HOME (created on first use)."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path = settings.home / SECRET_FILE
    try:
        return _read_or_create_secret(path)
    except OSError as err:
        raise EnvironmentProblem(
            f"cannot read or create the token secret {path}: {err.strerror}",
            hint="set OPSKIT_JWT_SECRET, or make OPSKIT_HOME writable",
        ) from err


def _read_or_create_secret(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of two processes starting at once, one writes and the other reads its secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # the writer may not have written yet
            secret = path.read_text().strip()
            if secret:
                return secret
            time.sleep(0.01)
        raise OSError(0, "the file is empty") from None
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    return secret


def mint_token(secret: str, user_id: int, ttl_s: float) -> str:
    """A token for user_id that expires ttl_s seconds from now."""
    if not 1 <= user_id <= MAX_USER_ID:
        raise BadInput(f"user id must be between 1 and {MAX_USER_ID}, not {user_id}")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise BadInput(f"token lifetime must be between 1 s and {MAX_TTL_S} s, not {ttl_s}")
    now = int(time.time())
    claims = {"sub": str(user_id), "iat": now, "exp": now + int(ttl_s)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def token_for_user(settings: Settings, user_id: int, ttl_s: float) -> str:
    """`opskit token`: a token signed with the configured secret. The user is not looked up."""
    return mint_token(jwt_secret(settings), user_id, ttl_s)


def user_id_from_token(secret: str, token: str) -> int:
    """The user id a valid token names; InvalidToken otherwise (signature, expiry, claims)."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("the token has expired") from None
    except jwt.InvalidTokenError as err:
        raise InvalidToken(f"invalid token: {err}") from None
    subject = claims["sub"]
    if not (isinstance(subject, str) and subject.isascii() and subject.isdigit()):
        raise InvalidToken("invalid token: sub is not a user id")
    user_id = int(subject)
    if not 1 <= user_id <= MAX_USER_ID:
        raise InvalidToken("invalid token: sub is not a user id")
    return user_id


class VerifiedTokens:
    """Tokens this process has verified, with their user and expiry.

    A client sends the same token on every request; checking its HS256 signature and claims
    costs about 50 µs of CPU, a fifth of a simple read. A cached token is still refused once
    its `exp` has passed. At most `size` tokens are kept (the oldest verified go first).
    """

    def __init__(self, secret: str, size: int = TOKEN_CACHE_SIZE) -> None:
        self.secret = secret
        self.size = size
        self._known: dict[str, tuple[int, float]] = {}  # token -> (user id, exp)

    def user_id(self, token: str) -> int:
        known = self._known.get(token)
        if known is not None and time.time() < known[1]:
            return known[0]
        user_id = user_id_from_token(self.secret, token)  # InvalidToken when not valid
        if len(self._known) >= self.size:
            del self._known[next(iter(self._known))]
        self._known[token] = (user_id, _expiry(token))
        return user_id


def _expiry(token: str) -> float:
    """The `exp` claim of a token whose signature and claims were just verified."""
    payload = token.split(".")[1]
    return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])

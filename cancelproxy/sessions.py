"""Session and request ids, and credential fingerprints."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = [
    "ANONYMOUS",
    "Caller",
    "credential_fingerprint",
    "is_valid_session_id",
    "new_request_id",
    "new_session_id",
    "token_matches",
]

_SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# The fingerprint of a request that carried no Authorization header.
ANONYMOUS = "none"


def is_valid_session_id(value: str) -> bool:
    return _SESSION_ID_RE.fullmatch(value) is not None


def new_session_id() -> str:
    return f"sess_{secrets.token_hex(16)}"  # 128 random bits


def new_request_id() -> str:
    return f"req_{secrets.token_hex(16)}"


def credential_fingerprint(authorization: str | None) -> str:
    """A stable, one-way name for a credential: it is what records and logs hold.

    SHA-256 of a high-entropy API key cannot be reversed, and the same key gives
    the same fingerprint in every replica and after a restart, so a user can
    still read and cancel their records.
    """
    if not authorization:
        return ANONYMOUS
    digest = hashlib.sha256(authorization.strip().encode("utf-8")).hexdigest()
    return f"sha256:{digest[:32]}"


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether ``Authorization: Bearer <token>`` names ``token`` (constant time)."""
    if not token or not authorization:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


@dataclass(frozen=True)
class Caller:
    """Who asks to read or cancel: a credential fingerprint, perhaps the admin.

    The one access rule: a record belongs to the credential that made it,
    and the admin may touch anything.
    """

    credential: str
    admin: bool = False

    @classmethod
    def of(cls, authorization: str | None, admin_token: str) -> Caller:
        return cls(credential_fingerprint(authorization), token_matches(authorization, admin_token))

    def owns(self, credential: str) -> bool:
        return self.admin or credential == self.credential

"""Session and request ids, and credential fingerprints."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ANONYMOUS",
    "CREDENTIAL_HEADERS",
    "Caller",
    "credential_fingerprint",
    "is_valid_session_id",
    "new_request_id",
    "new_session_id",
    "token_matches",
]

_SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# The headers a client may authenticate with: OpenAI's, Anthropic's, Azure's.
CREDENTIAL_HEADERS = ("Authorization", "x-api-key", "api-key")

# The fingerprint of a request that carried none of them.
ANONYMOUS = "none"


def is_valid_session_id(value: str) -> bool:
    return _SESSION_ID_RE.fullmatch(value) is not None


def new_session_id() -> str:
    return f"sess_{secrets.token_hex(16)}"  # 128 random bits


def new_request_id() -> str:
    return f"req_{secrets.token_hex(16)}"


def credential_fingerprint(headers: Mapping[str, str]) -> str:
    """A stable, one-way name for the credential a request carries: it is what
    records and logs hold.

    Every credential header counts: a request authenticated only by
    ``x-api-key`` or ``api-key`` must not share the anonymous fingerprint with
    every other such request. SHA-256 of a high-entropy API key cannot be
    reversed, and the same key gives the same fingerprint in every replica and
    after a restart, so a user can still read and cancel their records.
    """
    present = [(name, value.strip()) for name in CREDENTIAL_HEADERS if (value := headers.get(name, "").strip())]
    if not present:
        return ANONYMOUS
    if len(present) == 1 and present[0][0] == "Authorization":
        # The form records made before the other headers counted: their
        # owners keep access to them.
        material = present[0][1]
    else:
        material = "\n".join(f"{name.lower()}:{value}" for name, value in present)
    # aiohttp hands over a header's bytes that are not UTF-8 as surrogates:
    # surrogateescape gives those very bytes back, where a plain encode raised.
    digest = hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()
    return f"sha256:{digest[:32]}"


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether ``Authorization: Bearer <token>`` names ``token`` (constant time)."""
    if not token or not authorization:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), token.encode())


@dataclass(frozen=True)
class Caller:
    """Who asks to read or cancel: a credential fingerprint, perhaps the admin.

    The one access rule: a record belongs to the credential that made it,
    and the admin may touch anything.
    """

    credential: str
    admin: bool = False

    @classmethod
    def of(cls, headers: Mapping[str, str], admin_token: str) -> Caller:
        """The caller of a request; the admin token is only ever read from ``Authorization: Bearer``."""
        return cls(credential_fingerprint(headers), token_matches(headers.get("Authorization"), admin_token))

    def owns(self, credential: str) -> bool:
        return self.admin or credential == self.credential

"""Ids and credential fingerprints."""

from __future__ import annotations

import hashlib

from multidict import CIMultiDict, CIMultiDictProxy

from cancelproxy.sessions import (
    ANONYMOUS,
    Caller,
    credential_fingerprint,
    is_valid_session_id,
    new_request_id,
    new_session_id,
    token_matches,
)


def test_session_id_rules() -> None:
    for good in ("a", "0", "chat:42", "u.1_t-2", "x" * 128):
        assert is_valid_session_id(good), good
    for bad in ("", "-a", ".a", "_a", "a b", "a/b", "a\n", "x" * 129, "é"):
        assert not is_valid_session_id(bad), bad


def test_minted_ids_are_valid_unique_and_long() -> None:
    sessions = {new_session_id() for _ in range(1000)}
    requests = {new_request_id() for _ in range(1000)}
    assert len(sessions) == len(requests) == 1000
    assert all(is_valid_session_id(s) and len(s) == 5 + 32 for s in sessions)
    assert all(r.startswith("req_") and len(r) == 4 + 32 for r in requests)


def _auth(value: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({"Authorization": value}))


def _headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def test_fingerprints_are_stable_one_way_and_distinct() -> None:
    key = "Bearer sk-live-abcdefghijklmnopqrstuvwxyz"
    assert credential_fingerprint(_auth(key)) == credential_fingerprint(_auth(key))
    assert credential_fingerprint(_auth(key)) != credential_fingerprint(_auth(key + "x"))
    assert "sk-live" not in credential_fingerprint(_auth(key))
    assert credential_fingerprint(_headers()) == credential_fingerprint(_auth("")) == ANONYMOUS
    # The form records of earlier versions hold, so their owners keep access.
    assert credential_fingerprint(_auth(key)) == "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:32]


def test_every_credential_header_is_fingerprinted() -> None:
    a, b = "sk-a-0123456789", "sk-b-0123456789"
    for header in ("x_api_key", "api_key"):
        mine, theirs = credential_fingerprint(_headers(**{header: a})), credential_fingerprint(_headers(**{header: b}))
        assert ANONYMOUS not in (mine, theirs) and mine != theirs and a not in mine
    # The same key in another header, or with another header beside it, is another credential.
    assert credential_fingerprint(_headers(x_api_key=a)) != credential_fingerprint(_headers(api_key=a))
    assert credential_fingerprint(_headers(x_api_key=a)) != credential_fingerprint(_headers(x_api_key=a, api_key=b))
    assert credential_fingerprint(_headers(X_API_KEY=a)) == credential_fingerprint(_headers(x_api_key=a))


def test_admin_token_match() -> None:
    assert token_matches("Bearer tok", "tok")
    assert token_matches("bearer  tok ", "tok")
    assert not token_matches("Bearer tok", "")
    assert not token_matches("Bearer other", "tok")
    assert not token_matches("Basic tok", "tok")
    assert not token_matches(None, "tok")


def test_the_access_rule() -> None:
    owner = Caller.of(_auth("Bearer sk-owner"), admin_token="adm")
    assert owner.owns(credential_fingerprint(_auth("Bearer sk-owner")))
    assert not owner.owns(credential_fingerprint(_auth("Bearer sk-other"))) and not owner.admin
    admin = Caller.of(_auth("Bearer adm"), admin_token="adm")
    assert admin.admin and admin.owns(credential_fingerprint(_auth("Bearer sk-other")))
    assert not Caller.of(_headers(), admin_token="").owns(credential_fingerprint(_auth("Bearer sk-owner")))
    anthropic_style = Caller.of(_headers(x_api_key="sk-owner"), admin_token="adm")
    assert not anthropic_style.owns(credential_fingerprint(_headers()))
    assert anthropic_style.owns(credential_fingerprint(_headers(x_api_key="sk-owner")))

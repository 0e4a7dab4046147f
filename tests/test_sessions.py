"""Ids and credential fingerprints."""

from __future__ import annotations

from cancelproxy.sessions import (
    ANONYMOUS,
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


def test_fingerprints_are_stable_one_way_and_distinct() -> None:
    key = "Bearer sk-live-abcdefghijklmnopqrstuvwxyz"
    assert credential_fingerprint(key) == credential_fingerprint(key)
    assert credential_fingerprint(key) != credential_fingerprint(key + "x")
    assert "sk-live" not in credential_fingerprint(key)
    assert credential_fingerprint(None) == credential_fingerprint("") == ANONYMOUS


def test_admin_token_match() -> None:
    assert token_matches("Bearer tok", "tok")
    assert token_matches("bearer  tok ", "tok")
    assert not token_matches("Bearer tok", "")
    assert not token_matches("Bearer other", "tok")
    assert not token_matches("Basic tok", "tok")
    assert not token_matches(None, "tok")


def test_the_access_rule() -> None:
    from cancelproxy.sessions import Caller

    owner = Caller.of("Bearer sk-owner", admin_token="adm")
    assert owner.owns(credential_fingerprint("Bearer sk-owner"))
    assert not owner.owns(credential_fingerprint("Bearer sk-other")) and not owner.admin
    admin = Caller.of("Bearer adm", admin_token="adm")
    assert admin.admin and admin.owns(credential_fingerprint("Bearer sk-other"))
    assert not Caller.of(None, admin_token="").owns(credential_fingerprint("Bearer sk-owner"))

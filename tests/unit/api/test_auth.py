from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from modelgate.api.auth import KeyStore
from modelgate.api.throttle import FailureThrottle
from modelgate.config import build_config
from modelgate.errors import AuthenticationFailed, ConfigError, PermissionDenied, RateLimited

KEY = "mg_live_0123456789abcdefghijk"


def store(tmp_path: Path, **auth) -> KeyStore:
    return KeyStore(
        build_config(
            {"auth": auth}, source="x", environ={"KEYS": "mg_env_aaaaaaaaaaaaaaaa, mg_env_bbbbbbbbbbbbbbbb"}
        )
    )


def test_keys_kept_only_as_digests(tmp_path: Path) -> None:
    ks = store(tmp_path, api_keys=[KEY])
    dump = repr(vars(ks)) + repr(ks._keys)
    assert KEY not in dump
    assert ks.authenticate(f"Bearer {KEY}", "c", scope="inference").name == "api-0"


def test_sources_file_and_env(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("# team keys\nmg_file_cccccccccccccccc\n\n")
    f.chmod(0o600)
    ks = store(tmp_path, api_keys_file=str(f), api_keys_env="KEYS")
    for k in ("mg_file_cccccccccccccccc", "mg_env_aaaaaaaaaaaaaaaa", "mg_env_bbbbbbbbbbbbbbbb"):
        assert ks.authenticate(f"Bearer {k}", "c", scope="inference")


def test_scopes_and_admin(tmp_path: Path) -> None:
    ks = store(tmp_path, api_keys=[{"key": KEY, "models": ["a"]}], admin_keys=["mg_admin_dddddddddddddddd"])
    p = ks.authenticate(f"Bearer {KEY}", "c", scope="inference")
    assert p.may_use("a") and not p.may_use("b")
    with pytest.raises(PermissionDenied):
        ks.authenticate(f"Bearer {KEY}", "c", scope="admin")
    with pytest.raises(PermissionDenied):
        ks.authenticate("Bearer mg_admin_dddddddddddddddd", "c", scope="inference")
    assert ks.authenticate("Bearer mg_admin_dddddddddddddddd", "c", scope="admin").admin


def test_bad_and_missing_keys(tmp_path: Path) -> None:
    ks = store(tmp_path, api_keys=[KEY])
    for header in (None, "", "Bearer", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer " + KEY.upper()):
        with pytest.raises(AuthenticationFailed):
            ks.authenticate(header, "c", scope="inference")


def test_short_keys_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shorter than 16"):
        store(tmp_path, api_keys=["short"])


def test_brute_force_is_throttled_but_never_a_valid_key(tmp_path: Path) -> None:
    ks = store(tmp_path, api_keys=[KEY])
    for _ in range(30):
        with pytest.raises(AuthenticationFailed):
            ks.authenticate("Bearer wrong-wrong-wrong-wrong", "1.2.3.4", scope="inference")
    with pytest.raises(RateLimited) as exc:  # the address that fails: 429 now
        ks.authenticate("Bearer wrong-wrong-wrong-wrong", "1.2.3.4", scope="inference")
    assert exc.value.retry_after and exc.value.retry_after > 0
    with pytest.raises(RateLimited):
        ks.authenticate(None, "1.2.3.4", scope="inference")
    # a valid key from the same address (a NAT, a load balancer) is not held back
    assert ks.authenticate(f"Bearer {KEY}", "1.2.3.4", scope="inference").name == "api-0"
    with pytest.raises(AuthenticationFailed):  # another address still gets its 401
        ks.authenticate("Bearer wrong-wrong-wrong-wrong", "5.6.7.8", scope="inference")


def test_a_rotating_ipv6_client_is_counted_by_its_prefix(tmp_path: Path) -> None:
    ks = store(tmp_path, api_keys=[KEY])
    for i in range(30):
        with pytest.raises(AuthenticationFailed):
            ks.authenticate("Bearer wrong-wrong-wrong-wrong", f"2001:db8:1:2::{i + 1:x}", scope="inference")
    with pytest.raises(RateLimited):
        ks.authenticate("Bearer wrong-wrong-wrong-wrong", "2001:db8:1:2:ffff::9", scope="inference")
    with pytest.raises(AuthenticationFailed):  # the next /64 is someone else
        ks.authenticate("Bearer wrong-wrong-wrong-wrong", "2001:db8:1:3::1", scope="inference")


def test_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path: Path) -> None:
    cfg = build_config(
        {"server": {"trusted_proxies": ["10.0.0.0/8"]}, "auth": {"api_keys": [KEY]}}, source="x", environ={}
    )
    ks = KeyStore(cfg)
    bad = "Bearer wrong-wrong-wrong-wrong"
    for _ in range(30):  # one client behind the balancer 10.0.0.5 (and a proxy of ours)
        with pytest.raises(AuthenticationFailed):
            ks.authenticate(bad, "10.0.0.5", scope="inference", forwarded="203.0.113.7, 10.1.1.1")
    with pytest.raises(RateLimited):
        ks.authenticate(bad, "10.0.0.6", scope="inference", forwarded="203.0.113.7")
    # another client behind the same balancer is not that client
    with pytest.raises(AuthenticationFailed):
        ks.authenticate(bad, "10.0.0.5", scope="inference", forwarded="198.51.100.1")
    # from an untrusted peer the header is the client's own word: ignored
    for _ in range(30):
        with pytest.raises(AuthenticationFailed):
            ks.authenticate(bad, "192.0.2.1", scope="inference", forwarded=f"198.51.100.{_}")
    with pytest.raises(RateLimited):
        ks.authenticate(bad, "192.0.2.1", scope="inference", forwarded="198.51.100.99")


def test_trusted_proxies_must_be_networks() -> None:
    with pytest.raises(ConfigError, match="server.trusted_proxies: .*'10.0.0.0/33'"):
        build_config({"server": {"trusted_proxies": ["10.0.0.0/33"]}}, source="x", environ={})


def test_the_failure_table_evicts_the_least_recent_instead_of_clearing() -> None:
    throttle = FailureThrottle(limit=3, size=100)
    for _ in range(3):
        throttle.fail("192.0.2.1")
    for i in range(99):  # 99 other addresses fill the table
        throttle.fail(f"198.51.100.{i}")
    throttle.fail("192.0.2.1")  # still failing: the most recent again
    for i in range(150):  # many more newcomers (rotating addresses)
        throttle.fail(f"203.0.113.{i % 250}x{i}")
    assert len(throttle) == 100
    # the oldest went first, one at a time: never the whole table at once
    assert [f"203.0.113.{i % 250}x{i}" for i in range(50, 150)] == list(throttle._table)


def test_eviction_keeps_an_attacker_that_keeps_failing() -> None:
    throttle = FailureThrottle(limit=3, size=10)
    for i in range(200):
        throttle.fail("192.0.2.1")  # the attacker keeps failing between others
        throttle.fail(f"198.51.100.{i}")
    with pytest.raises(RateLimited):
        throttle.check("192.0.2.1")
    assert len(throttle) == 10


def test_keys_given_as_sha256_digests(tmp_path: Path) -> None:
    digest = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
    f = tmp_path / "keys"
    f.write_text("sha256:" + hashlib.sha256(b"mg_file_cccccccccccccccc").hexdigest().upper() + "\n")
    f.chmod(0o400)
    ks = store(tmp_path, api_keys=[{"key": digest, "name": "hashed"}], api_keys_file=str(f))
    assert ks.authenticate(f"Bearer {KEY}", "c", scope="inference").name == "hashed"
    assert ks.authenticate("Bearer mg_file_cccccccccccccccc", "c", scope="inference")
    with pytest.raises(AuthenticationFailed):  # the digest itself is not the key
        ks.authenticate(f"Bearer {digest}", "c", scope="inference")
    with pytest.raises(ConfigError, match="64 hex"):
        store(tmp_path, api_keys=["sha256:abc"])


def test_a_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("mg_file_cccccccccccccccc\n")
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="accessible by group or others.*chmod 400"):
        store(tmp_path, api_keys_file=str(f))
    f.chmod(0o640)
    with pytest.raises(ConfigError, match="accessible by group or others"):
        store(tmp_path, admin_keys_file=str(f))


def test_no_keys_means_open_but_loopback_only() -> None:
    from modelgate.serve import _resolve_bind

    cfg = build_config({}, source="x", environ={})
    assert KeyStore(cfg).authenticate(None, "c", scope="admin").admin
    assert _resolve_bind(cfg, "0.0.0.0", 8000) == ("127.0.0.1", 8000)
    keyed = build_config({"auth": {"api_keys": [KEY]}}, source="x", environ={})
    assert _resolve_bind(keyed, "0.0.0.0", 8000) == ("0.0.0.0", 8000)


def test_expired_keys_are_refused(tmp_path: Path) -> None:
    ks = store(
        tmp_path,
        api_keys=[
            {"key": KEY, "expires": "2020-01-01T00:00:00Z"},
            {"key": "mg_later_0123456789abcdefgh", "expires": "2999-01-01T00:00:00"},  # no zone: UTC
        ],
    )
    with pytest.raises(AuthenticationFailed, match="expired"):
        ks.authenticate(f"Bearer {KEY}", "c", scope="inference")
    assert ks.authenticate("Bearer mg_later_0123456789abcdefgh", "c", scope="inference").name == "api-1"


async def test_a_reload_reads_the_key_file_again_and_keeps_the_limits(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("mg_old_0123456789abcdefghij\n")
    keys.chmod(0o600)
    cfg = build_config(
        {"auth": {"api_keys_file": str(keys), "api_keys": [{"key": KEY, "name": "paced", "rpm": 2}]}},
        source="x",
        environ={},
    )
    ks = KeyStore(cfg)
    paced = ks.authenticate(f"Bearer {KEY}", "c", scope="inference")
    assert paced.limits is not None
    await paced.limits.acquire()
    keys.write_text("mg_new_0123456789abcdefghij\n")  # the old key revoked, a new one issued
    reloaded = KeyStore(cfg, previous=ks)
    with pytest.raises(AuthenticationFailed):
        reloaded.authenticate("Bearer mg_old_0123456789abcdefghij", "c", scope="inference")
    assert reloaded.authenticate("Bearer mg_new_0123456789abcdefghij", "c", scope="inference")
    again = reloaded.authenticate(f"Bearer {KEY}", "c", scope="inference")
    assert again.limits is paced.limits  # what it used is still counted
    assert again.limits.describe()["in_flight"] == 1
    assert reloaded.store is ks.store


def test_a_key_file_that_is_not_text_is_a_config_error(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_bytes(b"\xff\xfe\x00binary")
    keys.chmod(0o600)
    with pytest.raises(ConfigError, match="not UTF-8"):
        store(tmp_path, api_keys_file=str(keys))

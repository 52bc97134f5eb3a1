from __future__ import annotations

from pathlib import Path

import pytest

from modelgate.api.auth import KeyStore
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


def test_brute_force_is_throttled(tmp_path: Path) -> None:
    ks = store(tmp_path, api_keys=[KEY])
    for _ in range(30):
        with pytest.raises(AuthenticationFailed):
            ks.authenticate("Bearer wrong-wrong-wrong-wrong", "1.2.3.4", scope="inference")
    with pytest.raises(RateLimited) as exc:
        ks.authenticate(f"Bearer {KEY}", "1.2.3.4", scope="inference")
    assert exc.value.retry_after and exc.value.retry_after > 0
    assert ks.authenticate(f"Bearer {KEY}", "5.6.7.8", scope="inference")  # others unaffected


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
    with pytest.raises(ConfigError, match="not UTF-8"):
        store(tmp_path, api_keys_file=str(keys))

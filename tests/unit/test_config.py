from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelgate.config import build_config, load_config
from modelgate.errors import ConfigError

OPENAI_MODEL = {"id": "m", "backend": "openai", "endpoints": [{"url": "http://127.0.0.1:9/v1"}]}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "modelgate.yaml"
    p.write_text(text)
    return p


def test_full_example_loads(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
server: {host: 127.0.0.1, port: 8000}
auth: {api_keys: [mg_abcdefghijklmnop]}
health: {interval_s: 5, timeout_s: 2}
models:
  - {id: coder, backend: local, path: ./models/coder, device: cuda:1}
  - id: llama
    backend: tgi
    endpoints:
      - url: http://127.0.0.1:8081
      - url: http://127.0.0.1:8084
        launch: {kind: process, command: [modelgate, worker, --model, ./m, --port, "8084"], env: {OMP_NUM_THREADS: "4"}}
""",
    )
    cfg = load_config(p, environ={})
    assert cfg.models[0].device == "cuda:1"
    assert cfg.models[1].endpoints[1].launch is not None
    assert cfg.source == str(p)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("server: {prot: 1}", "server.prot: unknown key"),
        ("server: {port: nope}", "server.port"),
        ("models: [{id: m, backend: magic, endpoints: []}]", "models.0.backend"),
        (
            "models: [{id: m, backend: openai, endpoints: [{url: 'file:///etc/passwd'}]}]",
            "models.0.endpoints.0.url",
        ),
        ("models: [{id: m, backend: openai, endpoints: [{url: 'http://169.254.169.254/v1'}]}]", "link-local"),
        ("models: [{id: m, backend: openai}]", "needs at least one"),
        ("models: [{id: m, backend: local}]", "needs 'path'"),
        ("[1, 2]", "top level must be a mapping"),
        ("a: [", "invalid YAML"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(p, environ={})
    assert str(p) in exc.value.message
    assert needle in exc.value.message


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/modelgate.yaml", environ={})


def test_env_overrides_and_types(tmp_path: Path) -> None:
    p = write(tmp_path, "server: {port: 8000}")
    cfg = load_config(p, environ={"MODELGATE_SERVER__PORT": "9001", "MODELGATE_HEALTH__INTERVAL_S": "0.5"})
    assert (cfg.server.port, cfg.health.interval_s) == (9001, 0.5)
    with pytest.raises(ConfigError, match="MODELGATE_SERVR__PORT: unknown config section"):
        load_config(p, environ={"MODELGATE_SERVR__PORT": "1"})
    with pytest.raises(ConfigError, match="server.port"):
        load_config(p, environ={"MODELGATE_SERVER__PORT": "eighty"})


def test_frozen() -> None:
    cfg = build_config({"models": [OPENAI_MODEL]}, source="x", environ={})
    with pytest.raises(Exception):
        cfg.server.port = 1  # type: ignore[misc]


def test_secrets_resolved_once_and_not_in_repr() -> None:
    raw = {"models": [{**OPENAI_MODEL, "endpoints": [{"url": "http://127.0.0.1:9/v1", "api_key_env": "UP"}]}]}
    cfg = build_config(raw, source="x", environ={"UP": "sk-secret-value"})
    assert cfg.secret("UP") == "sk-secret-value"
    assert "sk-secret-value" not in repr(cfg) and "sk-secret-value" not in cfg.model_dump_json()
    with pytest.raises(ConfigError, match="NOPE is not set"):
        build_config(raw, source="x", environ={}).secret("NOPE")


def test_duplicate_ids() -> None:
    with pytest.raises(ConfigError, match="used twice"):
        build_config({"models": [OPENAI_MODEL, OPENAI_MODEL]}, source="x", environ={})


def test_unreadable_key_file(tmp_path: Path) -> None:
    from modelgate.api.auth import KeyStore

    cfg = build_config({"auth": {"api_keys_file": str(tmp_path / "missing")}}, source="cfg.yaml", environ={})
    with pytest.raises(ConfigError, match=r"cfg.yaml: API key file .*missing does not exist"):
        KeyStore(cfg)
    assert os.environ is not None


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "2852039166",
        "0xa9.0xfe.0xa9.0xfe",
        "169.254.43518",
        "[::ffff:169.254.169.254]",
        "[fe80::1]",
        "[fd00:ec2::254]",  # AWS's IPv6 metadata endpoint
        "[fd00:ec2:0::254]",
        "100.100.100.200",  # Alibaba Cloud's
        "1684301000",
        "[::ffff:100.100.100.200]",
    ],
)
def test_link_local_upstreams_are_refused_in_every_notation(host: str) -> None:
    raw = {"models": [{"id": "m", "backend": "openai", "endpoints": [{"url": f"http://{host}/v1"}]}]}
    with pytest.raises(ConfigError, match=r"t.yaml: models.0.endpoints.0.url: link-local"):
        build_config(raw, source="t.yaml", environ={})


@pytest.mark.parametrize(
    ("server", "url", "loops"),
    [
        ({"port": 8000}, "http://127.0.0.1:8000/v1", True),
        ({"port": 8000}, "http://localhost:8000/v1", True),
        ({"port": 8000}, "http://0.0.0.0:8000/v1", True),
        ({"port": 80}, "http://127.0.0.1/v1", True),  # the scheme's port
        ({"host": "0.0.0.0", "port": 8000}, "http://127.0.0.1:8000/v1", True),
        ({"port": 8000}, "http://127.0.0.1:8001/v1", False),
        ({"port": 8000}, "http://[::1]:8000/v1", False),  # another socket
        ({"host": "10.0.0.5", "port": 8000}, "http://127.0.0.1:8000/v1", False),
        ({"port": 0}, "http://127.0.0.1:8000/v1", False),
    ],
)
def test_an_endpoint_at_the_gateways_own_address_is_refused(server: dict, url: str, loops: bool) -> None:
    raw = {"server": server, "models": [{"id": "m", "backend": "openai", "endpoints": [{"url": url}]}]}
    if loops:
        with pytest.raises(
            ConfigError, match=r"^t.yaml: models.0.endpoints.0.url: .* this gateway's own address"
        ):
            build_config(raw, source="t.yaml", environ={})
    else:
        build_config(raw, source="t.yaml", environ={})


def test_serve_flags_that_move_the_gateway_onto_an_endpoint_are_refused() -> None:
    from modelgate.serve import _resolve_bind

    raw = {"auth": {"api_keys": ["mg_k_0123456789abcdefghijklmnop"]}}
    raw["models"] = [{"id": "m", "backend": "openai", "endpoints": [{"url": "http://127.0.0.1:9000/v1"}]}]
    cfg = build_config(raw, source="t.yaml", environ={})
    assert _resolve_bind(cfg, None, 9001) == ("127.0.0.1", 9001)
    with pytest.raises(ConfigError, match="own address"):
        _resolve_bind(cfg, None, 9000)

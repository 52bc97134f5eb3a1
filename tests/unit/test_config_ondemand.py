"""Config of models on demand and fallbacks: what is accepted, what is refused and why."""

from __future__ import annotations

import pytest

from modelgate.config import build_config
from modelgate.errors import ConfigError


def model(mid: str, **extra: object) -> dict[str, object]:
    return {"id": mid, "backend": "openai", "endpoints": [{"url": f"http://127.0.0.1:9/{mid}"}], **extra}


def build(*models: dict[str, object], **top: object) -> object:
    return build_config({"models": list(models), **top}, source="t.yaml", environ={})


def test_fallbacks_by_id_or_alias_are_accepted() -> None:
    cfg = build(model("a", fallbacks=["bee"]), model("b", aliases=["bee"], fallbacks=["c"]), model("c"))
    assert cfg.models[0].fallbacks == ("bee",)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("models", "words"),
    [
        ([model("a", fallbacks=["nope"])], "no model is named 'nope'"),
        ([model("a", aliases=["x"], fallbacks=["x"])], "is the model itself"),
        ([model("a", fallbacks=["b"]), model("b", fallbacks=["c"]), model("c", fallbacks=["a"])], "cycle"),
    ],
)
def test_bad_fallbacks_are_refused(models: list[dict[str, object]], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        build(*models)


def test_on_demand_needs_something_to_start() -> None:
    with pytest.raises(ConfigError, match="on_demand needs a local model or an endpoint with 'launch'"):
        build(model("a", load="on_demand"))
    launched = {
        "id": "w",
        "backend": "tgi",
        "load": "on_demand",
        "idle_ttl_s": 30,
        "memory": {"ram_gib": 1.5},
        "endpoints": [{"url": "http://127.0.0.1:9", "launch": {"kind": "process", "command": ["x"]}}],
    }
    cfg = build(launched, {"id": "l", "backend": "local", "path": "/m", "load": "on_demand"})
    assert cfg.models[0].memory.ram_gib == 1.5  # type: ignore[attr-defined]


def test_resources_name_devices() -> None:
    cfg = build(model("a"), resources={"cpu": {"gib": 16}, "cuda:0": {"gib": 70}})
    assert cfg.resources["cuda:0"].gib == 70  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="'gpu' must be cpu or cuda:N"):
        build(model("a"), resources={"gpu": {"gib": 1}})
    with pytest.raises(ConfigError, match="resources.cpu.gib"):
        build(model("a"), resources={"cpu": {"gib": 0}})

"""Import rules that keep DESIGN.md's layers: api -> router -> backends -> engine,
with http/ (HTTP/1.1 server and client) under api, backends and supervisor.

- http/ imports nothing of modelgate beyond errors, timers and itself;
- api/ imports neither engine/ nor the composition root (gateway.py, serve.py);
- supervisor/ never imports backends/ (its probes go over http/);
- wire/ imports neither torch/transformers nor aiohttp (schemas stay pure);
- router/ never imports api/; backends/ never import api/ or router/;
- only engine/ (and the local backend / worker) import torch or transformers;
- storage/ and supervisor/ never import api/ or router/;
- state/ (per-key counts, memory or Redis) never imports api/, router/ or backends/.
Exits 1 listing every violation.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "modelgate"
HEAVY = ("torch", "transformers", "safetensors.torch")

_ABOVE_HTTP = tuple(
    f"modelgate.{m}"
    for m in (
        "api",
        "router",
        "backends",
        "engine",
        "worker",
        "storage",
        "supervisor",
        "wire",
        "config",
        "gateway",
        "serve",
        "services",
        "check",
        "cli",
        "metrics",
        "logs",
        "types",
    )
)

RULES: dict[str, tuple[str, ...]] = {
    # http/ is HTTP/1.1 itself: nothing of modelgate above errors and timers
    "http": ("aiohttp", *_ABOVE_HTTP, *HEAVY),
    "wire": ("aiohttp", "modelgate.api", "modelgate.router", "modelgate.backends", *HEAVY),
    "router": ("modelgate.api", *HEAVY),
    "backends": ("modelgate.api", "modelgate.router"),
    "storage": ("modelgate.api", "modelgate.router", "modelgate.supervisor"),
    # the supervisor probes over http/, never through a backend
    "supervisor": ("modelgate.api", "modelgate.router", "modelgate.backends"),
    # api/ is the OpenAI API: the wiring lives in gateway.py, the engine below the backends
    "api": ("modelgate.engine", "modelgate.gateway", "modelgate.serve", *HEAVY),
    "engine": ("modelgate.api", "modelgate.router", "aiohttp"),
    # state/ counts per-key limits; the api's handles use it, never the reverse
    "state": ("modelgate.api", "modelgate.router", "modelgate.backends", "aiohttp", *HEAVY),
}
# top-level modules held to the same kind of rule
MODULE_RULES: dict[str, tuple[str, ...]] = {
    "check.py": ("modelgate.api", "modelgate.supervisor"),
    "services.py": ("modelgate.api", "modelgate.router", "modelgate.backends"),
}
# files allowed to touch torch outside engine/
TORCH_OK = {"backends/local.py", "worker"}


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def main() -> int:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        layer = rel.split("/")[0]
        forbidden = RULES.get(layer, ()) if "/" in rel else MODULE_RULES.get(rel, ())
        if rel in TORCH_OK or layer in TORCH_OK:
            forbidden = tuple(f for f in forbidden if f not in HEAVY)
        for name in imports(path):
            for f in forbidden:
                if name == f or name.startswith(f + "."):
                    bad.append(f"{rel}: imports {name} ({layer}/ must not import {f})")
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

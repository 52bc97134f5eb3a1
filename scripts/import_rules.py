"""Import rules that keep DESIGN.md's layers: api -> router -> backends -> engine.

- wire/ imports neither torch/transformers nor aiohttp (schemas stay pure);
- router/ never imports api/; backends/ never import api/ or router/;
- only engine/ (and the local backend / worker) import torch or transformers;
- storage/ and supervisor/ never import api/ or router/.
Exits 1 listing every violation.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "modelgate"
HEAVY = ("torch", "transformers", "safetensors.torch")

RULES: dict[str, tuple[str, ...]] = {
    "wire": ("aiohttp", "modelgate.api", "modelgate.router", "modelgate.backends", *HEAVY),
    "router": ("modelgate.api", *HEAVY),
    "backends": ("modelgate.api", "modelgate.router"),
    "storage": ("modelgate.api", "modelgate.router", "modelgate.supervisor"),
    "supervisor": ("modelgate.api", "modelgate.router"),
    "api": HEAVY,
    "engine": ("modelgate.api", "modelgate.router", "aiohttp"),
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
        forbidden = RULES.get(layer, ())
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

"""The house: every import between dyno's parts points down the layers below (README, "Layout"), so no
part knows one above it (DESIGN.md, "Parts"): the codec knows no model, a policy no transport, the
monitor no policy, and nothing imports the CLI or the benchmarks. Imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dyno"

#: Lowest first. A part imports only parts of lower layers (parts of one layer not each other).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("dyno",),                                         # the package root: errors and the version only
    ("packing", "datafile", "progress", "codec", "graph", "emulate", "wire", "bandwidth"),
    ("figures",),                                      # a matplotlib figure saved atomically (datafile)
    ("zoo",),
    ("plan", "manifest"),                              # manifest: the exported heads' file (no torch)
    ("monitor", "partition"),
    ("policy",),
    ("offline", "simulate", "export"),                 # export: heads as ONNX files
    ("runtime",),
    ("cloud", "device"),                               # cloud: tails on Ray Serve; device: ONNX heads, no torch
    ("bench",),
    ("cli",),
    ("__main__",),
)
LEVEL = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "dyno"


def _imports() -> list[tuple[str, str, str]]:
    """(file, importing part, imported part) for every import of dyno inside dyno/."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "proto" in path.parts:
            continue
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("dyno"):
                names = [node.module] if node.module != "dyno" else [f"dyno.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("dyno")]
            else:
                continue
            for name in names:
                imported = _part(name)
                if imported in LEVEL or name == "dyno":
                    found.append((str(path.relative_to(PACKAGE.parent)), _part(module), imported))
                else:  # ``from dyno import __version__``
                    found.append((str(path.relative_to(PACKAGE.parent)), _part(module), "dyno"))
    return found


def test_every_part_is_placed():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert parts - set(LEVEL) == set()


def test_imports_point_down():
    upward = [f"{file}: {a} imports {b}" for file, a, b in _imports() if a != b and LEVEL[b] >= LEVEL[a]]
    assert upward == []


@pytest.mark.parametrize("part, forbidden", [
    ("codec", {"zoo", "partition", "graph", "plan", "runtime", "policy"}),   # a codec knows no model
    ("policy", {"runtime", "emulate", "simulate"}),                         # a policy knows no transport
    ("monitor", {"policy"}),                                                 # the monitor no policy
    ("partition", {"codec", "runtime", "policy"}),                           # cuts know no bits, networks
])
def test_parts_know_nothing_of_what_design_forbids(part, forbidden):
    assert {b for _, a, b in _imports() if a == part} & forbidden == set()

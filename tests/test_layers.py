"""The layers of docs/design.md: a module imports only from its own layer or below, the packages of a
layer do not import each other in a circle, and the light side imports no PyTorch at module level.

Imports are read from the source with ``ast`` (inside functions too: a lazy import is still a
dependency), so the test needs nothing installed beyond the standard library.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pocketcnn"

# unit (first path component under pocketcnn/, without .py) -> layer
LAYERS = {
    "errors": 0, "fileio": 0, "lazy": 0, "validate": 0, "envvars": 0,
    "models": 1, "data": 1,
    "artifacts": 2,
    "train": 3, "compress": 3, "export": 3, "runtime": 3,
    "workflows": 4, "bench": 4, "serve": 4,
    "cli": 5, "__main__": 5, "__init__": 5,
}
# modules that must import neither torch nor torchvision at module level (the light install runs them)
TORCH_FREE = ["errors", "fileio", "lazy", "validate", "envvars",
              "data/spec.py", "data/__init__.py", "artifacts/__init__.py", "artifacts/metadata.py",
              "runtime/__init__.py", "runtime/images.py", "runtime/onnx.py", "runtime/predictor.py", "runtime/loader.py",
              "runtime/litert.py", "workflows/predict.py", "serve", "runtime/web.py", "__init__.py", "__main__.py",
              # every command module (--help works without torch), and what their options list
              "cli", "compress/options.py", "artifacts/formats.py", "train/config.py", "workflows/batch.py",
              "workflows/batch_ray.py"]


def modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def unit_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def imported(path: Path, *, top_level_only: bool = False) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``path`` (relative ones resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(("pocketcnn", *path.relative_to(SRC).with_suffix("").parts))
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                out += [(node.lineno, f"{name}.{a.name}" if not node.module else name) for a in node.names]
            else:
                out.append((node.lineno, node.module or ""))
    return out


def test_every_module_has_a_layer():
    assert {unit_of(p) for p in modules()} <= set(LAYERS), "add new top-level modules to LAYERS and docs/design.md"


def test_imports_only_go_down():
    upward = []
    for path in modules():
        here = LAYERS[unit_of(path)]
        for line, name in imported(path):
            parts = name.split(".")
            if parts[0] != "pocketcnn" or len(parts) < 2 or parts[1] not in LAYERS:
                continue
            if LAYERS[parts[1]] > here:
                upward.append(f"{path.relative_to(SRC)}:{line} (layer {here}) imports {name} (layer {LAYERS[parts[1]]})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_no_import_circle_between_units():
    graph: dict[str, set[str]] = {u: set() for u in LAYERS}
    for path in modules():
        for _, name in imported(path):
            parts = name.split(".")
            if parts[0] == "pocketcnn" and len(parts) > 1 and parts[1] in LAYERS and parts[1] != unit_of(path):
                graph[unit_of(path)].add(parts[1])
    seen: dict[str, int] = {}

    def visit(u: str, stack: list[str]) -> None:
        seen[u] = 1
        for v in sorted(graph[u]):
            if seen.get(v) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(v):] + [v]))
            if v not in seen:
                visit(v, stack + [v])
        seen[u] = 2

    for u in sorted(graph):
        if u not in seen:
            visit(u, [u])


@pytest.mark.parametrize("target", TORCH_FREE)
def test_light_side_imports_no_torch_at_module_level(target):
    root = SRC / target
    paths = sorted(root.rglob("*.py")) if root.is_dir() else [root if root.suffix else root.with_suffix(".py")]
    assert paths and all(p.is_file() for p in paths), target
    heavy = [f"{p.relative_to(SRC)}:{line} imports {name}" for p in paths
             for line, name in imported(p, top_level_only=True)
             if name.split(".")[0] in ("torch", "torchvision", "onnx", "matplotlib")]
    assert not heavy, "\n".join(heavy)


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: an artifacts module importing the CLI is reported."""
    fake = tmp_path / "pocketcnn"
    (fake / "artifacts").mkdir(parents=True)
    (fake / "artifacts" / "bad.py").write_text("def f():\n    from ..cli import common\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    with pytest.raises(AssertionError, match=r"artifacts/bad.py:2 \(layer 2\) imports pocketcnn.cli"):
        test_imports_only_go_down()

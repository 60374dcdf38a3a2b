"""Layering rules, checked by an AST scan of the imports and names.

- backbones ← methods ← trainer; backbones ← eval; trainer/eval ← sweeps.
- dataroom (image layouts, decoding, the loader) sits below trainer and eval.
- The trainer loop never names a registered method, backbone or dataset.
- eval/ never imports methods/; results/ never imports torch or any of our compute
  packages; trainer/ and eval/ never import submitit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imports_of(package: str) -> dict[Path, set[str]]:
    out: dict[Path, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[path] = names
    return out


FORBIDDEN = {
    "backbones": {"methods", "trainer", "eval", "sweeps", "results", "submitit"},
    "dataroom": {"backbones", "methods", "trainer", "eval", "sweeps", "results", "submitit"},
    "methods": {"trainer", "eval", "sweeps", "results", "submitit"},
    "trainer": {"eval", "sweeps", "results", "submitit"},
    "eval": {"methods", "sweeps", "results", "submitit"},
    "results": {"torch", "torchvision", "backbones", "methods", "trainer", "eval", "sweeps",
                "dataroom"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test__dependency_direction(package: str) -> None:
    bad = {str(p.relative_to(ROOT)): sorted(names & FORBIDDEN[package])
           for p, names in imports_of(package).items() if names & FORBIDDEN[package]}
    assert not bad, f"forbidden imports: {bad}"


def test__trainer_loop_names_no_plugin() -> None:
    import methods  # noqa: F401
    from backbones import BACKBONES
    from methods.base import METHODS
    from trainer.datasets import DATASETS

    registered = set(METHODS.names()) | set(BACKBONES.names()) | set(DATASETS.names())
    for name in ("loop.py", "optim.py", "dist.py", "diagnostics.py", "train.py", "io.py"):
        tree = ast.parse((ROOT / "trainer" / name).read_text())
        found = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                 and isinstance(n.value, str) and n.value in registered}
        found |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in registered}
        assert not found, f"trainer/{name} names {found}"

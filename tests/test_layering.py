"""The packages import downward only: every import of spectral_diffusion, read from the source, follows LAYERS."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "spectral_diffusion"

#: Lowest first. A package may import itself and the packages of lower layers, never its own layer's
#: others or anything above.
LAYERS = [
    {"utils", "deploy"},
    {"networks", "diffusion"},
    {"autoencoders"},
    {"bundles", "pipelines"},
    {"teachers"},
    {"losses"},
    {"data"},
    {"inpainting"},
    {"assembly"},
    {"evaluation"},
    {"training", "export"},
]
LAYER_OF = {package: index for index, layer in enumerate(LAYERS) for package in layer}


def imported_packages(source: Path) -> list[tuple[str, int]]:
    """``(package, line)`` of every ``spectral_diffusion.<package>`` import in a file, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "spectral_diffusion" and len(parts) > 1:
                found.append((parts[1], node.lineno))
    return found


def violations() -> list[str]:
    problems = []
    for source in sorted(PACKAGE.rglob("*.py")):
        relative = source.relative_to(PACKAGE)
        if len(relative.parts) == 1:
            continue  # spectral_diffusion/__init__.py
        own = relative.parts[0]
        for target, line in imported_packages(source):
            if target == own:
                continue
            if target not in LAYER_OF:
                problems.append(f"{relative}:{line} imports spectral_diffusion.{target}, which LAYERS does not place")
            elif LAYER_OF[target] >= LAYER_OF[own]:
                problems.append(
                    f"{relative}:{line}: {own} (layer {LAYER_OF[own]}) imports {target} (layer {LAYER_OF[target]})"
                )
    return problems


def test_every_package_is_placed():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == set(LAYER_OF)


def test_packages_import_only_lower_layers():
    assert violations() == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The reader itself: an import of training from utils, inside a function, is found."""
    (tmp_path / "utils").mkdir()
    (tmp_path / "training").mkdir()
    for name in ("utils", "training"):
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "utils" / "bad.py").write_text("def f():\n    from spectral_diffusion.training.callbacks import X\n")
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path)
    assert violations() == ["utils/bad.py:2: utils (layer 0) imports training (layer 10)"]

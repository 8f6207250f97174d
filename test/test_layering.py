"""Import rules between the layers (README "Architecture"): read from the source with `ast`, so a lazy import
inside a function counts as much as one at the top of a module.

  model/    imports neither engine/, session/, ros/ nor offline/
  engine/   imports neither session/, ros/ nor offline/
  session/  imports neither ros/ nor offline/ (nor rclpy)
  ros/      never imports offline/;   offline/ never imports ros/
and importing ttt3r_ros.ros.conversions (message adaptation) loads no torch.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ttt3r_ros"
LAYERS = ("model", "engine", "session", "ros", "offline")
FORBIDDEN: dict[str, set[str]] = {
    "model": {"engine", "session", "ros", "offline"},
    "engine": {"session", "ros", "offline"},
    "session": {"ros", "offline", "rclpy"},
    "ros": {"offline"},
    "offline": {"ros", "rclpy"},
}


def _imported(path: Path) -> set[str]:
    """What a module imports, as 'ttt3r_ros.x.y' or a top-level package name ('rclpy', 'torch')."""
    module_parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # the last part is the module itself (or __init__ of a package): level 1 is its package
                base = list(module_parts[:len(module_parts) - node.level])
                name = ".".join(base + ([node.module] if node.module else []))
                # `from .. import offline`: the names are modules too
                found.update(f"{name}.{alias.name}" for alias in node.names)
            else:
                name = node.module or ""
            found.add(name)
    return found


def _layer_of(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] == "ttt3r_ros":
        return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None
    return parts[0]


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_follow_the_architecture(layer: str) -> None:
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, f"no modules in {layer}/"
    violations = []
    for path in files:
        for name in _imported(path):
            if _layer_of(name) in FORBIDDEN[layer]:
                violations.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not violations, "\n".join(violations)


def test_the_rule_checker_sees_relative_and_lazy_imports() -> None:
    """The checker itself: relative imports (also in a package's __init__) and imports inside a function."""
    names = _imported(PACKAGE / "ros" / "conversions.py")
    assert "ttt3r_ros.session.message_codec" in names or "ttt3r_ros.session" in names
    assert "ttt3r_ros.engine" in names   # imported inside matrix_from_quaternion_xyzw
    demo = PACKAGE / "offline" / "demo_command.py"
    assert "ttt3r_ros.session.build" in _imported(demo)   # `from ..session.build import ...`
    assert "ttt3r_ros.engine.voxel_map" in _imported(PACKAGE / "engine" / "__init__.py")   # `from .voxel_map ...`


def test_importing_ros_conversions_loads_no_torch() -> None:
    code = ("import sys, ttt3r_ros.ros.conversions as c; "
            "heavy = sorted(m for m in ('torch', 'ttt3r_ros.engine', 'ttt3r_ros.offline') if m in sys.modules); "
            "print(heavy); raise SystemExit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

"""The package keeps its shape: small files and classes, and no import circle (dev/shape.py)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "dev"))

import shape


def test_the_package_has_its_shape() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "dev" / "shape.py")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == "shape ok"


def test_the_circle_finder_finds_circles_and_only_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert shape.circles(graph) == [["a", "b", "c"]]
    assert shape.circles({"a": {"b"}, "b": set()}) == []
